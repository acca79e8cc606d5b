"""The one registry of settings.

Server settings come, lowest precedence first, from their defaults, a TOML file (``--config`` or
``RANKER_CONFIG``), ``RANKER_<NAME>`` environment variables, and overrides passed to ``create_app``.
Each loop (decision point) has its own table ``[loops.<name>]`` with Personalizer's service
configuration names, its policy, rules and hashed keys. ``ranker settings`` prints them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import ranker

from ..outbox.definitions import OutboxSettings
from ..signals.definitions import ENTITY_TYPES, SignalSettings
from ..triage.definitions import TriageSettings
from ..web.definitions import ReviewSettings
from . import vwoptions
from .durations import MAX_DURATION, parse_duration  # noqa: F401 (parse_duration: ranker.core.settings' name)
from .rules import Rules

# The shipped policy files: beside the modules in an installed package (the wheel maps the project's
# policies/ folder to ranker/policies), in the project's policies/ folder in a checkout.
# Found from the package, not from this module's file, so that this module can live in any folder of the package.
_HERE = Path(ranker.__file__).resolve().parent
PACKAGE_POLICIES = _HERE / "policies" if (_HERE / "policies").is_dir() else _HERE.parent / "policies"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def mask_url(url: str) -> str:
    """A database URL with its password (in the authority or a ``password=`` parameter) replaced by ``***``."""
    url = re.sub(r"^([a-z]+://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


def mask_secrets(text: str, url: str | None) -> str:
    """``text`` with ``url`` (and any password of it) masked: for messages that may quote a setting's value."""
    if url:
        text = text.replace(url, mask_url(url))
        password = re.match(r"^[a-z]+://[^:/@?#]*:([^@/?#]*)@", url)
        if password and password.group(1):
            text = text.replace(password.group(1), "***")
    return text


def hash_key(key: str) -> str:
    """The stored form of an API key: its SHA-256 in hex."""
    return hashlib.sha256(key.encode()).hexdigest()


# A policy's kind: (its name, the VW option that makes it), single-slot (False) and multi-slot (True)
POLICY_KINDS = {False: ("single-slot", "--cb_explore_adf"), True: ("multi-slot", "--ccb_explore_adf")}


def policy_kind(words: list[str]) -> bool:
    """Whether split VW arguments make a multi-slot policy; a ValueError unless they use exactly one of
    ``--cb_explore_adf`` (single-slot) and ``--ccb_explore_adf`` (multi-slot)."""
    multislot = POLICY_KINDS[True][1] in words
    if multislot == (POLICY_KINDS[False][1] in words):
        raise ValueError("the arguments must use --cb_explore_adf (single-slot) or --ccb_explore_adf (multi-slot)")
    return multislot


class Policy(BaseModel):
    """A learning policy, as Personalizer's policy object: a name and VW arguments."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(min_length=1, max_length=4096)

    @field_validator("arguments")
    @classmethod
    def _contextual_bandit(cls, value: str) -> str:
        """The arguments as VW gets them, holding only options a policy may use (:mod:`ranker.core.vwoptions`)."""
        words = vwoptions.split(value)
        policy_kind(words)
        vwoptions.check(words)
        return " ".join(words)


class Key(BaseModel):
    """An API key of a loop, stored as its SHA-256 (``ranker hash-key`` prints it)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["rank", "admin", "signals", "review"] = Field(
        description="rank: Rank, Reward and Activate; admin: also configuration, model and log operations; "
        "signals: only ingestion (POST /v1/logs) and the entities API, which admin may use too; "
        "review: only reading and deciding triage items (the JSON API and the review pages), as admin may"
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key, lowercase hex")


class LoopSettings(BaseModel):
    """One decision point: its policy, Personalizer service configuration, rules and keys."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    policy: str | Policy = Field(
        "default",
        description="Name of a policy file in policies_dir (without .json), or an inline "
        '{name, arguments} table. "default" learns fast; "personalizer" is Personalizer\'s own default.',
    )
    reward_wait_time: str = Field(
        "PT10M",
        alias="rewardWaitTime",
        description="ISO 8601 duration (at least 1 s) a decision waits for rewards before it is learned.",
    )
    default_reward: float = Field(
        0.0, alias="defaultReward", ge=-1, le=1, description="Reward learned when none arrives in time."
    )
    reward_aggregation: Literal["earliest", "sum", "average", "min", "max", "median"] = Field(
        "earliest", alias="rewardAggregation", description="How several rewards for one event combine."
    )
    exploration_percentage: float = Field(
        0.2,
        alias="explorationPercentage",
        ge=0,
        le=1,
        description="Share of exploration, 0 to 1; sets --epsilon of epsilon-greedy policies.",
    )
    model_export_frequency: str = Field(
        "PT1M", alias="modelExportFrequency", description="ISO 8601 duration between model publications."
    )
    log_retention_days: int = Field(
        -1, alias="logRetentionDays", ge=-1, le=36500, description="Days decisions are kept; -1 keeps them forever."
    )
    learning_mode: Literal["Online", "Apprentice", "LoggingOnly"] = Field(
        "Online", alias="learningMode", description="Personalizer's learning mode."
    )
    max_actions: int = Field(500, alias="maxActions", ge=1, le=5000, description="Most actions in one Rank.")
    action_id_feature: bool = Field(
        True,
        alias="actionIdFeature",
        description='Add each action\'s id as a feature (top-level key "id") unless its features have one.',
    )
    apprentice_graduation_events: int = Field(
        0,
        alias="apprenticeGraduationEvents",
        ge=0,
        description="In Apprentice mode, switch to Online once a replay over at least this many logged events "
        "puts the model's lower confidence bound above the baseline's estimate; 0 never switches.",
    )
    is_inference_explainability_enabled: bool = Field(
        False,
        strict=True,
        alias="isInferenceExplainabilityEnabled",
        description="Rank answers with inferenceExplanation (each ranked action's largest feature contributions), "
        "explored and the rules' part.",
    )
    rules: Rules = Field(default_factory=Rules, description="Business rules applied before the model.")
    entities: dict[str, str] = Field(
        default_factory=dict,
        description='Where entity ids sit in the context, e.g. {account = "account.id"}: a Rank naming a known '
        "entity gets its attributes and features merged into the object holding the id (the caller's values win).",
    )
    keys: list[Key] = Field(default_factory=list, description="API keys of this loop, stored hashed.")

    @field_validator("entities")
    @classmethod
    def _entity_paths(cls, entities: dict[str, str]) -> dict[str, str]:
        for entity, path in entities.items():
            if entity not in ENTITY_TYPES:
                raise ValueError(f"entities: no entity type {entity!r}; the types are {', '.join(ENTITY_TYPES)}")
            parts = path.split(".")
            if len(parts) < 2 or not all(parts):
                raise ValueError(f"entities.{entity}: {path!r} must be a dotted path such as 'account.id'")
        return entities

    @field_validator("reward_wait_time", "model_export_frequency")
    @classmethod
    def _at_least_a_second(cls, value: str, info: ValidationInfo) -> str:
        if parse_duration(value) < timedelta(seconds=1):
            raise ValueError(f"{cls.model_fields[info.field_name].alias} must be at least 1 second")
        return value


class Settings(BaseModel):
    """Server settings; loops live in ``loops``."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path = Field(Path("logs"), description="Folder of the decision log database and models.")
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL database of the decision log, models and configuration, shared by every node "
        "(postgresql://user:password@host:port/db); unset: SQLite in data_dir. Never printed or logged.",
    )
    policies_dir: Path = Field(PACKAGE_POLICIES, description="Folder of policy files (name.json).")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8080, ge=1, le=65535, description="Port to bind.")
    workers: int = Field(2, ge=1, le=64, description="gunicorn worker processes (one per core is right).")
    threads: int = Field(
        8,
        ge=1,
        le=256,
        description="Threads per worker, for all requests but Rank, Reward and Activate (its poller serves those).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body accepted; larger ones get 413.")
    max_header_bytes: int = Field(
        65536, ge=4096, le=1_048_576, description="Largest request line and headers together; larger ones get 431."
    )
    header_timeout: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's line and headers, from connecting or from its "
        "first byte on a kept-alive connection; a request begun gets 408 after.",
    )
    body_timeout: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request's body once its headers are in (408 after); also "
        "the longest an answer waits for a client that does not read it.",
    )
    max_connections: int = Field(
        1000,
        ge=16,
        le=100_000,
        description="Connections one worker holds open (being read, answered or kept alive); more wait in the "
        "kernel's accept queue.",
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite synchronous mode. FULL survives power loss; NORMAL survives process kills only.",
    )
    commit_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a request waits for its commit (the write turn, another program's lock, the commit "
        "itself) before answering 503; a write so refused is never written. On PostgreSQL a read that Rank, Reward "
        "or Activate makes (e.g. enrichment's) is bounded the same way.",
    )
    policy_optimization_seconds: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="Time budget of the policy search an evaluation runs when enablePolicyOptimization is true.",
    )
    explanation_features: int = Field(
        10, ge=1, le=1000, description="Feature contributions listed per action in an explanation, largest first."
    )
    explanation_retention: str = Field(
        "P7D",
        description="ISO 8601 duration: model versions that served a decision this recently are kept, so the "
        "decision can still be explained (GET events/{eventId}?explain=true).",
    )
    discovery_refresh_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How old a worker's exposure shares for discovery rules may get before it reads the log again.",
    )
    null_endpoint: bool = Field(
        False, description="Serve POST /null (parses JSON, writes nothing); for the Rank benchmark."
    )
    default_loop: str | None = Field(
        None, description="Loop that serves requests when no loop has keys; unset: 'default', else the first loop."
    )
    loops: dict[str, LoopSettings] = Field(
        default_factory=lambda: {"default": LoopSettings()}, description="The decision points."
    )
    signals: SignalSettings = Field(
        default_factory=SignalSettings, description="Ingestion, entity attributes and feature definitions."
    )
    triage: TriageSettings = Field(
        default_factory=TriageSettings, description="The renewal-risk triage: patterns, playbook and reviews."
    )
    review: ReviewSettings = Field(default_factory=ReviewSettings, description="The review pages' sessions.")
    outbox: OutboxSettings = Field(
        default_factory=OutboxSettings, description="Delivery of approved messages (SMTP or webhook)."
    )

    @field_validator("loops")
    @classmethod
    def _loop_names(cls, loops: dict[str, LoopSettings]) -> dict[str, LoopSettings]:
        if not loops:
            raise ValueError("at least one loop is needed")
        for name in loops:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise ValueError(f"loop name {name!r}: letters, digits, '.', '_' and '-' only")
        return loops

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = value.get_secret_value().partition("://")[0]
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"database_url: the scheme must be postgresql://, not {scheme!r}")
        return value

    @field_validator("explanation_retention")
    @classmethod
    def _retention(cls, value: str) -> str:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _default_loop_exists(self) -> Settings:
        if self.default_loop is None:
            self.default_loop = "default" if "default" in self.loops else next(iter(self.loops))
        elif self.default_loop not in self.loops:
            raise ValueError(f"default_loop {self.default_loop!r} is not a loop")
        return self

    @model_validator(mode="after")
    def _triage(self) -> Settings:
        if self.triage.entity not in ENTITY_TYPES:
            raise ValueError(f"triage.entity {self.triage.entity!r}: the entity types are {', '.join(ENTITY_TYPES)}")
        if self.triage.playbook and self.triage.loop not in self.loops:
            raise ValueError(f"triage.loop {self.triage.loop!r} is not a loop (its playbook needs one)")
        return self

    @property
    def auth(self) -> bool:
        """Keys are required as soon as any loop has one."""
        return any(loop.keys for loop in self.loops.values())

    @property
    def database_path(self) -> Path:
        return self.data_dir / "ranker.db"

    @property
    def database_name(self) -> str:
        """The decision log as logs and messages name it: the SQLite file, or the URL without its password."""
        if self.database_url is None:
            return str(self.database_path)
        return mask_url(self.database_url.get_secret_value())

    def policy(self, loop: str) -> Policy:
        """The loop's policy, read from policies_dir when named."""
        policy = self.loops[loop].policy
        if isinstance(policy, Policy):
            return policy
        path = self.policies_dir / f"{policy}.json"
        try:
            return Policy.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"loop {loop!r}: cannot read policy {path}: {exc}") from exc


SECTIONS = ("loops", "signals", "triage", "review", "outbox")
SCALAR_SETTINGS = [name for name in Settings.model_fields if name not in SECTIONS]


class SettingsError(ValueError):
    """Settings that cannot be used, with a message for the operator."""


def load_settings(
    config: str | os.PathLike | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Build the settings from a TOML file, ``RANKER_*`` variables and overrides."""
    environ = os.environ if environ is None else environ
    config = config or environ.get("RANKER_CONFIG")
    data: dict[str, Any] = {}
    if config:
        try:
            data = tomllib.loads(Path(config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config {config}: {exc}") from exc
    for name in SCALAR_SETTINGS:
        value = environ.get(f"RANKER_{name.upper()}")
        if value is not None:
            data[name] = value
    data.update(overrides or {})
    try:
        settings = Settings.model_validate(data)
        for loop in settings.loops:
            settings.policy(loop)
    except (ValidationError, ValueError) as exc:
        url = data.get("database_url")
        raise SettingsError(mask_secrets(f"invalid settings: {exc}", url if isinstance(url, str) else None)) from None
    return settings


def documentation() -> list[tuple[str, str, str]]:
    """(name, default, help) of every setting, server-wide then per loop."""
    rows = []
    for name, field in Settings.model_fields.items():
        if name not in SECTIONS:
            rows.append((name, _default(field), field.description or ""))
    for name, field in SignalSettings.model_fields.items():
        rows.append((f"signals.{name}", _default(field), field.description or ""))
    for name, field in TriageSettings.model_fields.items():
        rows.append((f"triage.{name}", _default(field), field.description or ""))
    for section, model in (("review", ReviewSettings), ("outbox", OutboxSettings)):
        for name, field in model.model_fields.items():
            rows.append((f"{section}.{name}", _default(field), field.description or ""))
    for name, field in LoopSettings.model_fields.items():
        rows.append((f"loops.<name>.{field.alias or name}", _default(field), field.description or ""))
    return rows


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, list):
            value = [item.model_dump(exclude_none=True) if isinstance(item, BaseModel) else item for item in value]
        return json.dumps(value.model_dump() if isinstance(value, BaseModel) else value)
    value = field.default
    if value == PACKAGE_POLICIES:
        return "policies (the project's)"
    return str(value) if isinstance(value, Path) else json.dumps(value)
