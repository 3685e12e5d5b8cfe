"""The data steps: read (ingest), check (validate), put on a calendar and clean (clean), derive and
scale features (features), index windows (window), and the whole training preparation (prepare);
plus the bundled sample panel, and the small-page section their temporaries are made in (pages)."""
