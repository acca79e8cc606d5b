"""A configuration with signals for the tests: keys of every role, feature definitions, enrichment and rules."""

from __future__ import annotations

from conftest import ADMIN_KEY, RANK_KEY

from ranker.core.settings import hash_key

SIGNALS_KEY = "signals-key-0123456789"

FEATURES = """
[signals]
account_attribute = "account.id"
user_attribute = "user.id"
retention_days = 400

[[signals.features]]
name = "reporting_api_calls_30d"
entity = "account"
event = "api.call"
where = [{ path = "api.name", equals = "reporting" }]
aggregate = "count"
window = "P30D"

[[signals.features]]
name = "reporting_api_trend"
entity = "account"
event = "api.call"
where = [{ path = "api.name", equals = "reporting" }]
aggregate = "change"
window = "P30D"

[[signals.features]]
name = "days_to_renewal"
entity = "account"
aggregate = "days_until"
field = "contract.renewalDate"

[[signals.features]]
name = "customer_days"
entity = "account"
aggregate = "days_since"
field = "contract.startDate"

[[signals.features]]
name = "rows_exported_7d"
entity = "account"
event = "report.export"
aggregate = "sum"
field = "rows"
window = "P7D"

[[signals.features]]
name = "smallest_export"
entity = "account"
event = "report.export"
aggregate = "min"
field = "rows"

[[signals.features]]
name = "largest_export"
entity = "account"
event = "report.export"
aggregate = "max"
field = "rows"

[[signals.features]]
name = "apis_used_30d"
entity = "account"
event = "api.call"
aggregate = "distinct"
field = "api.name"
window = "P30D"

[[signals.features]]
name = "last_api"
entity = "user"
event = "api.call"
aggregate = "last"
field = "api.name"

[[signals.features]]
name = "days_since_login"
entity = "user"
event = "user.login"
aggregate = "days_since_last"
"""

CONFIG = f"""
[loops.cards]
entities = {{ account = "account.id", user = "user.id" }}
keys = [
  {{ role = "rank", sha256 = "{hash_key(RANK_KEY)}" }},
  {{ role = "admin", sha256 = "{hash_key(ADMIN_KEY)}" }},
  {{ role = "signals", sha256 = "{hash_key(SIGNALS_KEY)}" }},
]

[[loops.cards.rules.entitlements]]
name = "upsell-only-near-renewal"
actions = {{ ids = ["upsell"] }}
requires = [{{ path = "account.days_to_renewal", lte = 90 }}]

[[loops.cards.rules.entitlements]]
name = "upsell-needs-fresh-crm-data"
actions = {{ ids = ["upsell"] }}
requires = [{{ path = "account.contract.renewalDate", fresh_within = "P2D" }}]

[[loops.cards.rules.entitlements]]
name = "reporting-review-for-reporting-users"
actions = {{ ids = ["reporting-review"] }}
requires = [{{ path = "account.reporting_api_calls_30d", gte = 2 }}]
{FEATURES}
"""

ACTIONS = [
    {"id": "upsell", "features": [{"kind": "offer"}]},
    {"id": "reporting-review", "features": [{"kind": "meeting"}]},
    {"id": "guide", "features": [{"kind": "guide"}]},
]
