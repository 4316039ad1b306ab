"""Benchmarks: inference variants against peers (inference, report, peers), training steps (training), and
the one results writer every benchmark and script uses (results)."""
