"""The forecasting core: training and prediction (train, warm; the seeds side by side: seeds), the metrics and baselines
(evaluate), the backtest that decides what is served (backtest, combine), conformal intervals
(intervals) and hyper-parameter search (tune)."""
