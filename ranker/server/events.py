"""The decision lookup, ``GET events/{eventId}``: a decision as it was served, and why.

It answers the loop's rank or admin key with the decision's time, its context as logged (after enrichment),
the eligible actions with their probabilities and features, the excluded ones with the rules that excluded
them, the chosen action and its probability, the model version, whether the action was explored, the
rewards received so far and the activation state. With ``?explain=true`` it computes the feature
contributions (:mod:`ranker.serving.explain`) with the model version that served the decision, while that version is
stored (the trainer keeps the versions that served decisions within ``explanation_retention``).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from flask import Blueprint, Response, request

from ..core import dsjson, vwoptions
from ..core.errors import ApiError
from ..core.settings import Settings
from ..serving import explain, vwfeatures
from ..serving.engine import Engine
from ..store import Store, open_database
from .api import caller, json_response, path_id, service

bp = Blueprint("events", __name__)

_engines: OrderedDict[tuple[str, int], Engine] = OrderedDict()  # (model file, inode) -> engine, most recent last
_engines_lock = threading.Lock()
ENGINES_KEPT = 4


def engine_of(settings: Settings, loop: str, version: str) -> Engine | None:
    """A predict-only engine on a stored model version (its own options, read from its header), or None
    when the version is no longer stored."""
    path = open_database(settings).models.path(loop, version)
    if path is None:  # not stored (any more)
        return None
    try:
        key = (str(path.resolve()), path.stat().st_ino)
        with _engines_lock:
            if key in _engines:
                _engines.move_to_end(key)
                return _engines[key]
        data = path.read_bytes()
    except OSError:  # not stored (any more)
        return None
    header = vwoptions.model_header(data)
    vwoptions.check(header.options)
    # VW takes the rest of the options from the model's header; naming the reductions VW wrote there (cb_adf,
    # csoaa_ldf, ...) would build another stack
    kind = "--ccb_explore_adf" if "--ccb_explore_adf" in header.options else "--cb_explore_adf"
    engine = Engine(kind, str(path), version)
    vwfeatures.model_of(engine, " ".join(header.options))
    with _engines_lock:
        _engines[key] = engine
        while len(_engines) > ENGINES_KEPT:
            _engines.popitem(last=False)
    return engine


def _c(record: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A record's context (without ``_multi`` and ``_slots``) and its ``_multi`` actions."""
    c = record["c"]
    return {k: v for k, v in c.items() if k not in ("_multi", "_slots")}, c.get("_multi", [])


def _features(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k[:1] != "_"}


def lookup(store: Store, settings: Settings, loop: str, event_id: str, explain_it: bool) -> dict[str, Any] | None:
    """The decision ``event_id`` of ``loop`` as :mod:`ranker.server.events` describes it; None when there is none."""
    row = store.decision(loop, event_id)
    if row is None:
        return None
    rules = json.loads(row["explanation"])
    rewards = store.event_rewards(loop, event_id)
    body: dict[str, Any] = {
        "eventId": row["event_id"],
        "time": row["created_at"],
        "modelVersion": row["model_version"],
        "policy": row["policy"],
        "learningMode": row["learning_mode"],
        "deferActivation": bool(row["deferred"]),
        "activated": not row["deferred"] or row["activated_at"] is not None,
        "activatedAt": row["activated_at"],
        "actions": json.loads(row["action_ids"]),
        "rewards": [
            {"value": r["value"], "receivedAt": r["received_at"], **({"slotId": r["slot_id"]} if r["slot_id"] else {})}
            for r in rewards
        ],
    }
    record = json.loads(row["record"]) if row["record"] else None
    context, multi = _c(record) if record else ({}, [])
    body["context"] = context
    if row["slots"] is None:
        body.update(_single(row, rules, record, multi))
    else:
        body.update(_multi(row, rules, record, multi))
    if explain_it:
        body.update(_explained(settings, loop, row, rules, record, context, multi))
    return body


def _single(row: dict[str, Any], rules: dict[str, Any], record: Any, multi: list[dict[str, Any]]) -> dict[str, Any]:
    probabilities = dict(zip(record["a"], record["p"], strict=True)) if record else {}
    eligible = [
        {"id": entry["_id"], "probability": probabilities.get(i + 1, 0.0), "features": _features(entry)}
        for i, entry in enumerate(multi)
    ]
    eligible.sort(key=lambda a: (a["id"] != row["reward_action_id"], -a["probability"]))
    return {
        "rewardActionId": row["reward_action_id"],
        "probability": row["probability"],
        "explored": None if row["explored"] is None else bool(row["explored"]),
        "eligible": eligible,
        "excluded": rules.get("excluded", {}),
        "rules": rules,
    }


def _multi(row: dict[str, Any], rules: dict[str, Any], record: Any, multi: list[dict[str, Any]]) -> dict[str, Any]:
    served = {s["id"]: s for s in json.loads(row["slots"])}
    logged = {s["_id"]: s for s in record["c"].get("_slots", [])} if record else {}
    explored = rules.get("explored", {})
    slots = []
    for slot_id, slot_rules in rules["slots"].items():
        entry = logged.get(slot_id)
        slots.append(
            {
                "id": slot_id,
                "rewardActionId": served[slot_id]["rewardActionId"],
                "probability": served[slot_id]["probability"],
                "explored": explored.get(slot_id),
                "features": _features(entry) if entry else {},
                "eligible": [multi[m]["_id"] for m in entry["_inc"]] if entry else [],
                "excluded": slot_rules.get("excluded", {}),
                "rules": slot_rules,
            }
        )
    return {"slots": slots}


def _explained(
    settings: Settings,
    loop: str,
    row: dict[str, Any],
    rules: dict[str, Any],
    record: Any,
    context: dict[str, Any],
    multi: list[dict[str, Any]],
) -> dict[str, Any]:
    """``inferenceExplanation`` computed with the serving model version, or why it cannot be; as Rank's, each
    entry names the discovery rule that raised its action (``rules``: what the log kept of the rules)."""
    if record is None:
        return {"inferenceExplanationUnavailable": "no model chose: no action was eligible"}
    if row["model_version"] == "0":
        return {"inferenceExplanationUnavailable": "an untrained model served it (every weight 0)"}
    engine = engine_of(settings, loop, row["model_version"] or "")
    if engine is None:
        return {
            "inferenceExplanationUnavailable": f"model version {row['model_version']} is no longer stored "
            "(explanation_retention)"
        }
    model = vwfeatures.model_of(engine)
    top = settings.explanation_features
    c_json = dsjson._dumps({**context, "_multi": multi})
    if row["slots"] is None:
        order = [a - 1 for a in record["a"]]
        _, parsed = vwfeatures.predict_parsed(engine, dsjson.predict_line(c_json, len(multi)), vwfeatures.read_cb)
        found = explain.explain_cb(model, parsed, context, multi, order, top)
        raised = rules.get("discovery", {})
        return {"inferenceExplanation": [_raised(found[i].body(multi[i]["_id"]), raised) for i in order]}
    out = []
    slots = record["c"]["_slots"]
    chosen = dsjson.logged_actions(row["record"])
    for k, slot in enumerate(slots):
        pinned = [{**s, "_inc": [chosen[j]]} for j, s in enumerate(slots[:k])] + [slot]
        line = dsjson.with_slots(c_json, pinned)
        _, parsed = vwfeatures.predict_parsed(engine, line, lambda e: vwfeatures.read_ccb(e, len(multi)))
        found = explain.explain_ccb(model, parsed, context, multi, slot, k, chosen[k], top)
        raised = rules["slots"].get(slot["_id"], {}).get("discovery", {})
        out.append(_raised({"slotId": slot["_id"], **found.body(multi[chosen[k]]["_id"])}, raised))
    return {"inferenceExplanation": out}


def _raised(entry: dict[str, Any], raised: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """An explanation's entry with ``discovery`` ({rule, floor}) when a discovery floor raised its action."""
    why = raised.get(entry["id"])
    if why is not None:
        entry["discovery"] = {"rule": why["rule"], "floor": why["floor"]}
    return entry


def _flag(name: str) -> bool:
    value = request.args.get(name, "false").lower()
    if value not in ("true", "false"):
        raise ApiError(400, "BadRequest", f"{name} must be true or false", target=name)
    return value == "true"


@bp.get("/events/<event_id:event_id>")
def get_event(event_id: str) -> Response:
    loop = caller()
    if event_id.endswith(("/reward", "/activate")):  # GET of Reward or Activate, not an event id
        raise ApiError(405, "MethodNotAllowed", "the method is not allowed for the requested URL")
    event_id = path_id(event_id, "BadRequest", "eventId")
    body = lookup(service().store, service().settings, loop.name, event_id, _flag("explain"))
    if body is None:
        raise ApiError(404, "ResourceNotFound", f"no decision with event id {event_id!r} in this loop")
    return json_response(body, 200)


def describe(body: dict[str, Any], rows: int = 8) -> str:
    """A lookup for a person (``ranker explain``): what was chosen and why, most important first."""
    lines = [
        f"event {body['eventId']} at {body['time']}: model {body['modelVersion']}, policy {body['policy']}, "
        f"{body['learningMode']}"
    ]
    explained = {e.get("slotId", e["id"]): e for e in body.get("inferenceExplanation", [])}

    def why(entry: dict[str, Any] | None, indent: str) -> None:
        if entry is None:
            return
        lines.append(
            f"{indent}score {entry['score']:+.4f} = constant {entry['constant']:+.4f} + contributions; largest:"
        )
        for term in entry["features"][:rows]:
            lines.append(f"{indent}  {term['score']:+9.4f}  {term['name']}")

    def rules_part(rules: dict[str, Any], indent: str) -> None:
        for action, reasons in rules.get("excluded", {}).items():
            lines.append(f"{indent}excluded {action}: {', '.join(reasons)}")
        for action, factors in rules.get("reweighted", {}).items():
            named = ", ".join(f"{f['rule']} x{f['factor']:g}" for f in factors)
            lines.append(f"{indent}reweighted {action}: {named}")
        for action, found in rules.get("discovery", {}).items():
            lines.append(f"{indent}discovery {found['rule']} raised {action} to {found['floor']:g}")

    if "slots" in body:
        for slot in body["slots"]:
            explored = {True: " (explored)", False: "", None: ""}[slot["explored"]]
            p = "" if slot["probability"] is None else f" p={slot['probability']:.3f}"
            lines.append(f"slot {slot['id']}: {slot['rewardActionId']}{p}{explored}")
            rules_part(slot["rules"], "  ")
            why(explained.get(slot["id"]), "  ")
    else:
        chosen = body["rewardActionId"]
        explored = {True: " (explored: not the model's first choice)", False: "", None: ""}[body["explored"]]
        p = "" if body["probability"] is None else f" p={body['probability']:.3f}"
        lines.append(f"chosen: {chosen}{p}{explored}")
        rules_part(body["rules"], "  ")
        why(explained.get(chosen), "  ")
        others = [a for a in body["eligible"] if a["id"] != chosen]
        if others:
            lines.append("others: " + ", ".join(f"{a['id']} p={a['probability']:.3f}" for a in others[:rows]))
    if "inferenceExplanationUnavailable" in body:
        lines.append(f"no feature contributions: {body['inferenceExplanationUnavailable']}")
    rewards = ", ".join(
        f"{r['value']:g}" + (f" ({r['slotId']})" if "slotId" in r else "") + f" at {r['receivedAt']}"
        for r in body["rewards"]
    )
    lines.append(f"rewards: {rewards or 'none yet'}")
    activation = "activated" if body["activated"] else "deferred, not activated"
    if body["activatedAt"]:
        activation += f" at {body['activatedAt']}"
    lines.append(f"activation: {activation}")
    return "\n".join(lines)
