"""Operations: object storage (storage), model bundles and the champion pointer (registry), what a
retrain writes and the promotion (publish), accuracy on actuals and drift (monitor), the HTML report
(report) and its figures (plots)."""
