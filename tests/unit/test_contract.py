"""The /v1 contract holds: what a consumer of an output (or a producer of an input) was given stays valid.

``contract_v1/`` keeps the schemas as they stand; the schemas the code generates now are checked against them
under the README's rule: within ``/v1`` fields are only added, optional with defaults; anything breaking gets
``/v2``. A change this test refuses is either a mistake or a new ``/v2`` schema (a new topic or name), never an
edit of ``contract_v1/``. A compatible addition passes without touching the baselines."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tidewater.schemas import all_schemas

BASELINES = Path(__file__).resolve().parent / "contract_v1"
DOCUMENTATION = {"description", "title", "examples"}  # may change within a version (a default may not: it is data)
INPUT = "input_event.v1"  # read by the workers: producers write it; the others are written for consumers


def _meaning(node):
    """A schema node without its documentation: what it accepts."""
    if isinstance(node, dict):
        return {k: _meaning(v) for k, v in node.items() if k not in DOCUMENTATION}
    if isinstance(node, list):
        return [_meaning(v) for v in node]
    return node


def breaking_changes(old: dict, new: dict, *, is_input: bool) -> list[str]:
    """What ``new`` breaks of ``old``: a type or definition removed, a field removed or changed, a field no
    longer always present in an output (or newly required of an input's producers), a new field required or
    without a default. An input may accept more event types than before (a new variant in its union)."""
    found = []
    top_old, top_new = ({k: v for k, v in s.items() if k != "$defs"} for s in (old, new))
    if is_input:  # a new variant of the input union is allowed: producers of the old ones are unaffected
        variants_old, variants_new = top_old.get("anyOf", []), top_new.get("anyOf", [])
        if not all(v in variants_new for v in variants_old):
            found.append("an event type is no longer accepted")
        mapping_old = top_old.get("discriminator", {}).get("mapping", {})
        mapping_new = top_new.get("discriminator", {}).get("mapping", {})
        if any(mapping_new.get(k) != v for k, v in mapping_old.items()):
            found.append("the event types' discriminator changed")
        rest_old, rest_new = (_meaning(_without_variants(t)) for t in (top_old, top_new))
        if rest_old != rest_new:
            found.append("the top level changed")
    elif _meaning(top_old) != _meaning(top_new):
        found.append("the top level changed")
    defs_new = new.get("$defs", {})
    for name, d_old in old.get("$defs", {}).items():
        d_new = defs_new.get(name)
        if d_new is None:
            found.append(f"{name}: definition removed")
            continue
        props_old, props_new = d_old.get("properties", {}), d_new.get("properties", {})
        req_old, req_new = set(d_old.get("required", [])), set(d_new.get("required", []))
        for field, spec in props_old.items():
            if field not in props_new:
                found.append(f"{name}.{field}: removed")
            elif _meaning(spec) != _meaning(props_new[field]) and not (is_input and _widens(spec, props_new[field])):
                found.append(f"{name}.{field}: changed from {_meaning(spec)} to {_meaning(props_new[field])}")
        for field in sorted(req_old - req_new if not is_input else set()):
            found.append(f"{name}.{field}: no longer always present")
        for field in sorted(req_new - req_old):
            found.append(f"{name}.{field}: newly required")
        for field in sorted(set(props_new) - set(props_old) - req_new):
            if "default" not in props_new[field]:
                found.append(f"{name}.{field}: new optional field without a default")
        rest = [{k: v for k, v in d.items() if k not in ("properties", "required")} for d in (d_old, d_new)]
        if _meaning(rest[0]) != _meaning(rest[1]):
            found.append(f"{name}: object settings changed")
    return found


def _without_variants(top: dict) -> dict:
    """The input's top level without its list of event types and their mapping (both may grow)."""
    out = {k: v for k, v in top.items() if k != "anyOf"}
    if "discriminator" in out:
        out["discriminator"] = {k: v for k, v in out["discriminator"].items() if k != "mapping"}
    return out


def _widens(old: dict, new: dict) -> bool:
    """``new`` accepts each thing ``old`` did as one of its alternatives (an input field taking a second form,
    as ``ts`` took RFC 3339 date-times besides epoch seconds)."""
    alternatives = [_meaning(a) for a in new.get("anyOf", [])]
    return all(_meaning(a) in alternatives for a in old.get("anyOf", [old]))


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_the_schemas_the_code_publishes_keep_their_v1_contract(name):
    baseline = BASELINES / f"{name}.schema.json"
    assert baseline.is_file(), f"{name}: a new public schema: add its first version to {BASELINES}"
    current = json.loads(json.dumps(all_schemas()[name]))
    problems = breaking_changes(json.loads(baseline.read_text()), current, is_input=name == INPUT)
    assert not problems, f"{name} breaks its /v1 contract (publish a /v2 instead): {problems}"


def test_every_baseline_is_still_published():
    assert {p.name.removesuffix(".schema.json") for p in BASELINES.glob("*.json")} <= set(all_schemas())


def _offer() -> dict:
    return json.loads((BASELINES / "retention_offer.v1.schema.json").read_text())


def _input() -> dict:
    return json.loads((BASELINES / f"{INPUT}.schema.json").read_text())


def _edited(schema: dict, edit) -> dict:
    out = copy.deepcopy(schema)
    edit(out["$defs"])
    return out


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["RetentionOffer"]["properties"].pop("discount_pct"), "RetentionOffer.discount_pct: removed"),
    (lambda d: d["RetentionOffer"]["properties"]["discount_pct"].update(type="string"),
     "RetentionOffer.discount_pct: changed"),
    (lambda d: d["RetentionOffer"]["required"].remove("discount_pct"),
     "RetentionOffer.discount_pct: no longer always present"),
    (lambda d: (d["RetentionOffer"]["properties"].update(coupon={"type": "string"}),
                d["RetentionOffer"]["required"].append("coupon")), "RetentionOffer.coupon: newly required"),
    (lambda d: d["RetentionOffer"]["properties"].update(coupon={"type": "string"}),
     "RetentionOffer.coupon: new optional field without a default"),
    (lambda d: d.pop("ScoredItem"), "ScoredItem: definition removed"),
    (lambda d: d["RetentionOffer"]["properties"]["customer_value"].update(default=0.0),
     "RetentionOffer.customer_value: changed"),
])
def test_the_check_refuses_each_kind_of_breaking_change(edit, expected):
    problems = breaking_changes(_offer(), _edited(_offer(), edit), is_input=False)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_check_lets_compatible_changes_through():
    def add_optional_and_reword(d):
        d["RetentionOffer"]["properties"]["coupon"] = {"anyOf": [{"type": "string"}, {"type": "null"}],
                                                       "default": None, "description": "new"}
        d["RetentionOffer"]["properties"]["discount_pct"]["description"] = "reworded"
    assert breaking_changes(_offer(), _edited(_offer(), add_optional_and_reword), is_input=False) == []

    def new_event_type(schema):
        schema["anyOf"].append({"$ref": "#/$defs/Refund"})
        schema["discriminator"]["mapping"]["refund"] = "#/$defs/Refund"
        schema["$defs"]["Refund"] = {"type": "object", "properties": {}}
    widened = copy.deepcopy(_input())
    new_event_type(widened)
    assert breaking_changes(_input(), widened, is_input=True) == []
    second_form = copy.deepcopy(_input())  # a field that takes a second form: wider
    event_id = second_form["$defs"]["Click"]["properties"]["event_id"]
    second_form["$defs"]["Click"]["properties"]["event_id"] = {"anyOf": [event_id, {"type": "integer"}]}
    assert breaking_changes(_input(), second_form, is_input=True) == []
    assert [p.split(":")[0] for p in breaking_changes(second_form, _input(), is_input=True)] == ["Click.event_id"]
    # an input field that became optional is fine for producers; a removed event type is not
    relaxed = _edited(_input(), lambda d: d["Purchase"]["required"].remove("amount"))
    assert breaking_changes(_input(), relaxed, is_input=True) == []
    narrowed = copy.deepcopy(_input())
    narrowed["anyOf"].remove({"$ref": "#/$defs/Erase"})
    assert "an event type is no longer accepted" in breaking_changes(_input(), narrowed, is_input=True)
    # what a producer leaves out is read with the default: changing it changes the event (found by review)
    quantity = _edited(_input(), lambda d: d["Purchase"]["properties"]["quantity"].update(default=0))
    assert [p.split(":")[0] for p in breaking_changes(_input(), quantity, is_input=True)] == ["Purchase.quantity"]
    renamed = copy.deepcopy(_input())
    renamed["discriminator"]["propertyName"] = "kind"
    assert breaking_changes(_input(), renamed, is_input=True) == ["the top level changed"]


def test_every_output_field_has_a_description():
    """The README says the schema files carry each output field's meaning: the dead letters' fields and every
    output's ``schema`` had none (found by the README review). The dead letters' reasons are all named."""
    from tidewater.events import REJECT_REASONS

    for name, schema in all_schemas().items():
        if name == INPUT:
            continue
        for definition in schema["$defs"].values():
            for field, spec in definition.get("properties", {}).items():
                assert spec.get("description"), f"{name}: {field} has no description"
    reasons = all_schemas()["dead_letter.v1"]["$defs"]["DeadLetter"]["properties"]["reason"]["description"]
    assert all(reason in reasons for reason in REJECT_REASONS)
