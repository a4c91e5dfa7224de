"""Churn scorer: transformer over behaviour sequences + RFM summary, with classic baselines."""
