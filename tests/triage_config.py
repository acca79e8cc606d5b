"""A triage configuration and a small known scenario of accounts for the triage tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from conftest import ADMIN_KEY, OTHER_KEY, RANK_KEY

from ranker.app import create_app
from ranker.core.settings import hash_key, load_settings

REVIEW_KEY = "review-key-0123456789"
OTHER_REVIEW_KEY = "other-review-key-0123456789"
SIGNALS_KEY = "signals-key-0123456789"

CONFIG = f"""
[loops.cs-next-best-action]
entities = {{ account = "account.id" }}
rewardWaitTime = "P30D"
keys = [
  {{ role = "rank", sha256 = "{hash_key(RANK_KEY)}" }},
  {{ role = "admin", sha256 = "{hash_key(ADMIN_KEY)}" }},
  {{ role = "review", sha256 = "{hash_key(REVIEW_KEY)}" }},
  {{ role = "signals", sha256 = "{hash_key(SIGNALS_KEY)}" }},
]

[[loops.cs-next-best-action.rules.entitlements]]
name = "no-discount-on-locked-price"
actions = {{ ids = ["discount-offer"] }}
requires = [{{ path = "account.contract.lockedPrice", not_in = [true] }}]

[loops.other]
keys = [
  {{ role = "rank", sha256 = "{hash_key(OTHER_KEY)}" }},
  {{ role = "review", sha256 = "{hash_key(OTHER_REVIEW_KEY)}" }},
]

[[signals.features]]
name = "days_to_renewal"
entity = "account"
aggregate = "days_until"
field = "contract.renewalDate"

[triage]
loop = "cs-next-best-action"
horizon = "P90D"
schedule = "PT1H"

[triage.talking_points]
reporting = ["Reporting API p95 latency down 40 % since October"]

[[triage.patterns]]
name = "fintech-unhealthy"
when = [{{ path = "account.industry", equals = "fintech" }}, {{ path = "account.health", lte = 50 }}]
description = "Fintech accounts with a health score of 50 or less"

[[triage.playbook]]
id = "technical-review"
features = {{ kind = "meeting" }}
subject = "Technical review for {{{{ account.name }}}}"
template = \"\"\"Schedule a technical review for {{{{ account.name }}}}. Focus on the Reporting API.
{{% for point in talking_points.reporting %}}- {{{{ point }}}}
{{% endfor %}}Pattern: {{{{ pattern.description }}}} (health {{{{ pattern.matched['account.health'] }}}})\"\"\"

[[triage.playbook]]
id = "training"
features = {{ kind = "training" }}
subject = "Training for {{{{ account.name }}}}"
template = "Offer training to {{{{ account.name }}}}."

[[triage.playbook]]
id = "discount-offer"
features = {{ kind = "discount" }}
subject = "An offer for {{{{ account.name }}}}"
template = "Offer a discount to {{{{ account.name }}}}."
"""

NOW = datetime(2027, 1, 1, 12, tzinfo=UTC)  # the pass's moment: renewals up to 2027-04-01 are due
BEFORE = datetime(2026, 11, 1, tzinfo=UTC)  # when the CRM data was imported

# id: (industry, health, renewal date, locked price); flagged at NOW: a1 and a5 only
ACCOUNTS = {
    "a1": ("fintech", 20, "2027-02-15", False),  # matches, due
    "a2": ("fintech", 20, "2027-08-01", False),  # matches, renews after the horizon
    "a3": ("retail", 20, "2027-02-01", False),  # renews, no pattern
    "a4": ("fintech", 80, "2027-02-01", False),  # healthy
    "a5": ("fintech", 10, "2027-03-01", True),  # matches, due, locked price: no discount
    "a7": ("fintech", 10, "2026-12-20", False),  # renewal passed
    "a8": ("retail", 90, "2027-02-10", False),  # will churn unflagged: surprise churn
}
FLAGGED = {"a1", "a5"}


def make_app(tmp_path: Path, config: str = CONFIG, **overrides):
    path = tmp_path / "ranker.toml"
    path.write_text(config)
    return create_app(load_settings(path, environ={}, overrides={"data_dir": tmp_path, **overrides}))


def load_accounts(service, accounts=ACCOUNTS, at: datetime = BEFORE) -> None:
    for account_id, (industry, health, renewal, locked) in accounts.items():
        attributes = {
            "name": f"Account {account_id.upper()}",
            "industry": industry,
            "health": health,
            "contact": {"email": f"cs@{account_id}.example"},
            "contract": {"renewalDate": renewal, "lockedPrice": locked, "value": 1000 * health},
        }
        service.signals.put("account", account_id, attributes, at)
