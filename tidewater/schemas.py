"""JSON Schema files of the public contract, generated from the code (docs/schemas/)."""
from __future__ import annotations

import json
from pathlib import Path

import msgspec

from tidewater.events import InputEvent
from tidewater.outputs import PUBLIC_SCHEMAS


def all_schemas() -> dict[str, dict]:
    out = {"input_event.v1": msgspec.json.schema(InputEvent)}
    for name, cls in PUBLIC_SCHEMAS.items():
        out[name] = msgspec.json.schema(cls)
    return out


def write_schemas(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in all_schemas().items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
