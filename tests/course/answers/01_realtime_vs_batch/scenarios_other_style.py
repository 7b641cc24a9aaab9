CHOICES = dict(
    inline_defect_gate="realtime",      # 50 ms, the wafer's own readings
    operator_alert="realtime",          # seconds, live readings
    nightly_yield_report="batch",       # read at 08:00: nobody waits on one wafer
    tool_retirement_ranking="batch",    # quarterly
    lot_disposition="hybrid",           # drift precomputed, fresh readings at the lot's end
    recipe_suggestion="hybrid",         # candidates scored daily, the pick when the lot starts
)
