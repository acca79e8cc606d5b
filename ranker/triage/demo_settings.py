"""The settings file ``ranker demo renewal-triage`` writes: signal features of the demo company, the
``cs-next-best-action`` loop with its entitlement and priority rules, and the triage workflow with a playbook
of four actions, their email templates and talking points. A starting point for a real setup."""

from __future__ import annotations

import json
from pathlib import Path

LOOP = "cs-next-best-action"

FEATURES = """
[signals]
account_attribute = "account.id"
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
name = "api_calls_30d"
entity = "account"
event = "api.call"
aggregate = "sum"
field = "calls"
window = "P30D"

[[signals.features]]
name = "apis_used_30d"
entity = "account"
event = "api.call"
aggregate = "distinct"
field = "api.name"
window = "P30D"

[[signals.features]]
name = "active_days_30d"
entity = "account"
event = "app.session"
aggregate = "count"
window = "P30D"

[[signals.features]]
name = "usage_trend"
entity = "account"
event = "app.session"
aggregate = "change"
window = "P30D"

[[signals.features]]
name = "days_since_last_session"
entity = "account"
event = "app.session"
aggregate = "days_since_last"
window = "P90D"

[[signals.features]]
name = "tickets_90d"
entity = "account"
event = "ticket.created"
aggregate = "count"
window = "P90D"

[[signals.features]]
name = "negative_tickets_90d"
entity = "account"
event = "ticket.created"
where = [{ path = "sentiment", lte = -0.3 }]
aggregate = "count"
window = "P90D"

[[signals.features]]
name = "worst_ticket_sentiment_90d"
entity = "account"
event = "ticket.created"
aggregate = "min"
field = "sentiment"
window = "P90D"

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
"""

TRIAGE = '''
[triage]
loop = "cs-next-best-action"
entity = "account"
renewal_date = "contract.renewalDate"
outcome = "contract.outcome"
churned = ["churned"]
horizon = "P90D"
min_support = 30
holdout = 0.3
max_conditions = 3
schedule = "PT1H"

[triage.talking_points]
reporting = [
  "Reporting API p95 latency down 40 % since October",
  "Scheduled report exports now deliver to S3 and Google Drive",
]
onboarding = ["New admin onboarding path: 45 minutes, self-paced, with a certificate"]
pricing = ["Multi-year renewals lock today's price for up to three years"]

# A pattern written by hand, beside the mined ones (`ranker patterns list` shows both).
[[triage.patterns]]
name = "unhappy-enterprise"
description = "Enterprise accounts with two or more unhappy support tickets in 90 days"
when = [
  { path = "account.segment", equals = "enterprise" },
  { path = "account.negative_tickets_90d", gte = 2 },
]

[[triage.playbook]]
id = "technical-review"
features = { kind = "meeting", effort = "high", area = "product" }
subject = "{{ account.name }}: a technical review of your reporting setup"
template = """Hello {{ account.contact.name }},

We noticed your team's use of the Reporting API has changed recently, and we would like to help. \\
Could we schedule a 45-minute technical review with one of our solution engineers?

What has changed on our side:
{% for point in talking_points.reporting %}- {{ point }}
{% endfor %}
Best regards,
Your customer success team"""

[[triage.playbook]]
id = "training"
features = { kind = "training", effort = "medium", area = "adoption" }
subject = "Training for the {{ account.name }} team"
template = """Hello {{ account.contact.name }},

We'd like to offer your team a free training session to get more out of the product.
{% for point in talking_points.onboarding %}
- {{ point }}{% endfor %}

Best regards,
Your customer success team"""

[[triage.playbook]]
id = "exec-sponsor-call"
features = { kind = "meeting", effort = "high", area = "relationship" }
subject = "A call with our VP of Customer Success, for {{ account.name }}"
template = """Hello {{ account.contact.name }},

Ahead of your renewal on {{ account.contract.renewalDate }}, our VP of Customer Success would like to hear how \\
the product is working for {{ account.name }} and what you need from us next year. Would a 30-minute call in \\
the coming two weeks suit you?

Best regards,
Your customer success team"""

[[triage.playbook]]
id = "discount-offer"
features = { kind = "offer", effort = "low", area = "commercial" }
subject = "Your renewal: an offer for {{ account.name }}"
template = """Hello {{ account.contact.name }},

Your renewal is coming up on {{ account.contract.renewalDate }}. We would like to offer {{ account.name }} \\
a renewal at a reduced price for a multi-year commitment.
{% for point in talking_points.pricing %}
- {{ point }}{% endfor %}

Best regards,
Your customer success team"""
'''


def settings_text(data_dir: Path, admin_hash: str, review_hash: str) -> str:
    """The demo's ranker.toml."""
    loop = f"""
data_dir = {json.dumps(str(data_dir))}
default_loop = "{LOOP}"

[loops.{LOOP}]
entities = {{ account = "account.id" }}
isInferenceExplainabilityEnabled = true
rewardWaitTime = "P14D"
keys = [
  {{ role = "admin", sha256 = "{admin_hash}" }},
  {{ role = "review", sha256 = "{review_hash}" }},
]

# Entitlement: an account on a locked price is never offered a discount.
[[loops.{LOOP}.rules.entitlements]]
name = "no-discount-on-locked-price"
actions = {{ ids = ["discount-offer"] }}
requires = [{{ path = "account.contract.lockedPrice", equals = false }}]

# Strategic priority: an executive sponsor call is favoured for enterprise accounts.
[[loops.{LOOP}.rules.priority]]
name = "exec-sponsor-for-enterprise"
actions = {{ ids = ["exec-sponsor-call"] }}
factor = 2.0
when = [{{ path = "account.segment", equals = "enterprise" }}]
"""
    return "# Written by `ranker demo renewal-triage`.\n" + loop + FEATURES + TRIAGE
