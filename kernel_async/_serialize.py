"""Models to plain dicts and JSON, with the official SDK's ``to_dict``/``to_json`` options
(pure: no I/O)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["to_dict", "to_json"]


def _is_default(field: msgspec.structs.FieldInfo, value: Any) -> bool:
    if field.default is not msgspec.NODEFAULT:
        return bool(value == field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return bool(value == field.default_factory())
    return False


def _dump(
    value: Any, json: bool, api_names: bool, exclude_defaults: bool, exclude_none: bool
) -> Any:
    if isinstance(value, msgspec.Struct):
        cls = type(value)
        config = cls.__struct_config__
        out: dict[str, Any] = {}
        if isinstance(config.tag_field, str):
            out[config.tag_field] = config.tag
        for field in msgspec.structs.fields(cls):
            item = getattr(value, field.name)
            if item is None and exclude_none:
                continue
            if exclude_defaults and _is_default(field, item):
                continue
            key = field.encode_name if api_names else field.name
            out[key] = _dump(item, json, api_names, exclude_defaults, exclude_none)
        return out
    if isinstance(value, (list, tuple)):
        return [_dump(v, json, api_names, exclude_defaults, exclude_none) for v in value]
    if isinstance(value, dict):
        return {
            k: _dump(v, json, api_names, exclude_defaults, exclude_none) for k, v in value.items()
        }
    if json and not isinstance(value, (str, int, float, bool)) and value is not None:
        return msgspec.to_builtins(value)  # datetime: RFC 3339 string; bytes: base64
    return value


def to_dict(
    model: msgspec.Struct,
    *,
    mode: Literal["json", "python"] = "python",
    use_api_names: bool = True,
    exclude_unset: bool = True,
    exclude_defaults: bool = False,
    exclude_none: bool = False,
) -> dict[str, Any]:
    """``model`` as a dict, recursively. A field is "unset" when it holds its default:
    msgspec does not record which keys the JSON had, and a missing key decodes to the
    default (so ``exclude_unset`` also leaves out an explicit ``null`` with default
    ``None``)."""
    if mode not in ("json", "python"):
        raise ValueError(f"mode must be 'json' or 'python', got {mode!r}")
    dumped = _dump(
        model, mode == "json", use_api_names, exclude_unset or exclude_defaults, exclude_none
    )
    assert isinstance(dumped, dict)
    return dumped


def to_json(
    model: msgspec.Struct,
    *,
    indent: int | None = 2,
    use_api_names: bool = True,
    exclude_unset: bool = True,
    exclude_defaults: bool = False,
    exclude_none: bool = False,
) -> str:
    """``model`` as JSON text: indented by ``indent`` spaces, compact with ``None``."""
    data = to_dict(
        model,
        mode="json",
        use_api_names=use_api_names,
        exclude_unset=exclude_unset,
        exclude_defaults=exclude_defaults,
        exclude_none=exclude_none,
    )
    encoded = msgspec.json.encode(data)
    if indent is not None:
        encoded = msgspec.json.format(encoded, indent=indent)
    return encoded.decode()
