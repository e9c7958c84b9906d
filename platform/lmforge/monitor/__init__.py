"""``lmforge monitor``: a running deployment's quality (a probe set evaluated through its API) and traffic
(its request log, against a reference window), as Prometheus gauges and time series."""
