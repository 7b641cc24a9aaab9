# Anything with a deadline is "realtime", even when most of its work could be precomputed.
CHOICES = {
    "inline_defect_gate": "realtime",
    "nightly_yield_report": "batch",
    "lot_disposition": "realtime",
    "tool_retirement_ranking": "batch",
    "operator_alert": "realtime",
    "recipe_suggestion": "realtime",
}
