//! Scoring of anomaly detectors as the Numenta Anomaly Benchmark (NAB) defines it. Pure, no IO.
