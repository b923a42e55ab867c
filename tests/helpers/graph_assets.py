"""Every asset of the graph, in dependency order: what the end-to-end run and the refresh job must cover."""

GRAPH_ASSETS = (
    "raw_ping_dumps",
    "measurements",
    "measurement_sample",
    "splits",
    "probe_records",
    "trained_model",
    "evaluation",
    "membership_audit_report",
    "privacy_mitigation_report",
    "poisoning_report",
    "distilled_tiers",
)
