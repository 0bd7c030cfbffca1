"""The OpenAPI 3.1 description of every endpoint `syndicate serve` offers (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from syndicate.delivery import ReachMetric
from syndicate.store.base import State
from syndicate.story import Story


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _canonical_story() -> dict[str, Any]:
    """The canonical story's schema from the model itself, so its size, number and date bounds are never out of
    step with what intake enforces; its nested models (Image, ChannelOverride) become components too."""
    schema = Story.model_json_schema(ref_template="#/components/schemas/{model}")
    nested: dict[str, Any] = schema.pop("$defs", {})
    return {**nested, "CanonicalStory": schema}


def _error(description: str) -> dict[str, Any]:
    return _json_body(_ref("Error"), description)


_ERRORS_401 = {"401": _error("Missing or wrong bearer token")}
_SIGNED: list[dict[str, list[str]]] = [{"signature": []}]
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
#: Delivery ids are the stores' 64-bit keys.
_DELIVERY_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}

_FANOUT_RESPONSES = {
    "202": _json_body(_ref("FanOut"), "Accepted: the story version and all its deliveries are committed"),
    "200": _json_body(_ref("FanOut"), "This version was already accepted with the same content: no new work"),
    "400": _error("Malformed JSON"),
    "401": _error("Signature missing, wrong, stale (over 300 s) or replayed"),
    "409": _error("An older version than the one accepted, or the same version with other content"),
    "413": _error("Body over [server] max_body_bytes"),
    "415": _error("Content-Type is not application/json or application/ninjs+json"),
    "422": _json_body(_ref("ValidationError"), "The story is not valid; each field path and problem listed"),
    "503": _error(
        "The store cannot write now (disk full, database down): nothing was accepted and the signature is not spent;"
        " send the same request again after Retry-After seconds"
    ),
}


def document(channel_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole API; ``channel_paths`` are what configured channels mount (the app API, feeds, preview)."""
    states = [s.value for s in State]
    list_param = {"type": "string", "description": "comma-separated, or repeat the parameter"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "syndicate",
            "version": "1",
            "description": "Publish hook for the CMS, status and replay API for operators, health and metrics.",
        },
        "components": {
            "securitySchemes": {
                "signature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Syndicate-Signature",
                    "description": 't=<unix>,v1=<hex HMAC-SHA256([server] hook_secret, "<t>.<raw body>")>; 300 s '
                    "tolerance; each signature is accepted once",
                },
                "bearer": {"type": "http", "scheme": "bearer", "description": "[server] api_token"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "ValidationError": {
                    "type": "object",
                    "required": ["error", "message", "errors"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["path", "problem"],
                                "properties": {"path": {"type": "string"}, "problem": {"type": "string"}},
                            },
                        },
                    },
                },
                "Receipt": {
                    "type": ["object", "null"],
                    "properties": {
                        "remote_id": {"type": ["string", "null"]},
                        "url": {"type": ["string", "null"]},
                        "raw": {"type": "object"},
                    },
                },
                "Delivery": {
                    "type": "object",
                    "required": ["id", "story_id", "version", "channel", "action", "state", "attempts"],
                    "properties": {
                        "id": {"type": "integer"},
                        "story_id": {"type": "string"},
                        "version": {"type": "integer"},
                        "channel": {"type": "string"},
                        "action": {"enum": ["publish", "update", "retract"]},
                        "state": {"enum": states},
                        "attempts": {"type": "integer"},
                        "last_error": {"type": ["string", "null"]},
                        "error_class": {"type": ["string", "null"]},
                        "platform_code": {"type": ["string", "null"]},
                        "note": {"type": ["string", "null"]},
                        "due_at": {"type": ["string", "null"], "format": "date-time"},
                        "needs_reconcile": {"type": "boolean"},
                        "receipt": _ref("Receipt"),
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                    },
                },
                "FanOut": {
                    "type": "object",
                    "required": ["story_id", "version", "deliveries"],
                    "properties": {
                        "story_id": {"type": "string"},
                        "version": {"type": "integer"},
                        "new": {"type": "boolean"},
                        "deliveries": {"type": "array", "items": _ref("Delivery")},
                    },
                },
                "ChannelState": {
                    "type": "object",
                    "properties": {
                        "channel": {"type": "string"},
                        "paused": {"type": "boolean"},
                        "paused_until": {"type": ["string", "null"], "format": "date-time"},
                        "reason": {"type": ["string", "null"]},
                    },
                },
                "ReachFigures": {
                    "type": "object",
                    "description": "Figures by common metric; a metric the platform does not report is left out",
                    "properties": {m.value: {"type": "integer", "minimum": 0} for m in ReachMetric},
                    "additionalProperties": False,
                },
                "ChannelReach": {
                    "type": "object",
                    "required": ["channel", "latest", "series", "raw", "samples"],
                    "properties": {
                        "channel": {"type": "string"},
                        "latest": _ref("ReachFigures"),
                        "observed_at": {"type": ["number", "null"], "description": "unix seconds"},
                        "series": {
                            "type": "object",
                            "description": "per metric, [observed_at unix seconds, value] pairs, oldest first",
                            "additionalProperties": {
                                "type": "array",
                                "items": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "integer"}]},
                            },
                        },
                        "raw": {"type": "object", "description": "the latest reading under the platform's names"},
                        "samples": {
                            "type": "object",
                            "properties": {
                                "planned": {"type": "integer"},
                                "done": {"type": "integer"},
                                "failed": {"type": "integer"},
                                "stopped": {"type": "integer"},
                                "next_at": {"type": ["number", "null"]},
                            },
                        },
                    },
                },
                "StoryReach": {
                    "type": "object",
                    "required": ["story_id", "totals", "channels"],
                    "properties": {
                        "story_id": {"type": "string"},
                        "headline": {"type": "string"},
                        "section": {"type": ["string", "null"]},
                        "totals": _ref("ReachFigures"),
                        "channels": {"type": "array", "items": _ref("ChannelReach")},
                    },
                },
                "ReachReport": {
                    "type": "object",
                    "required": ["since", "until", "ranked_by", "stories", "by_channel", "by_section"],
                    "properties": {
                        "since": {"type": "number"},
                        "until": {"type": "number"},
                        "ranked_by": {"enum": [m.value for m in ReachMetric]},
                        "stories": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["story_id", "headline", "reach", "totals", "channels"],
                                "properties": {
                                    "story_id": {"type": "string"},
                                    "headline": {"type": "string"},
                                    "section": {"type": ["string", "null"]},
                                    "reach": {"type": "integer", "description": "reads over every channel"},
                                    "totals": _ref("ReachFigures"),
                                    "channels": {"type": "object", "additionalProperties": _ref("ReachFigures")},
                                },
                            },
                        },
                        "by_channel": {"type": "object", "additionalProperties": _ref("ReachFigures")},
                        "by_section": {"type": "object", "additionalProperties": _ref("ReachFigures")},
                    },
                },
                "Story": {
                    "description": "The canonical story or an IPTC ninjs 2.2 document (uri, headlines, bodies, ...; "
                    "its texts, numbers and dates take the canonical story's bounds).",
                    "anyOf": [_ref("CanonicalStory"), {"type": "object", "required": ["uri"]}],
                },
                **_canonical_story(),
            },
        },
        "paths": {
            "/v1/stories": {
                "post": {
                    "summary": "Publish hook: accept a story version and fan it out to every channel",
                    "security": _SIGNED,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("Story")},
                            "application/ninjs+json": {"schema": _ref("Story")},
                        },
                    },
                    "responses": _FANOUT_RESPONSES,
                }
            },
            "/v1/stories/{story_id}": {
                "parameters": [{"name": "story_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {
                    "summary": "The story and, per channel, deliveries with payloads, receipts and attempt history",
                    "security": _BEARER,
                    "responses": {
                        "200": _json_body({"type": "object"}, "Story status"),
                        **_ERRORS_401,
                        "404": _error("No such story"),
                    },
                },
                "delete": {
                    "summary": "Retract the story from every channel that has it (signed like the publish hook)",
                    "security": _SIGNED,
                    "responses": {
                        "202": _FANOUT_RESPONSES["202"],
                        "200": _FANOUT_RESPONSES["200"],
                        "401": _FANOUT_RESPONSES["401"],
                        "404": _error("No such story"),
                        "413": _FANOUT_RESPONSES["413"],
                        "503": _FANOUT_RESPONSES["503"],
                    },
                },
            },
            "/v1/stories/{story_id}/reach": {
                "parameters": [{"name": "story_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {
                    "summary": "The story's reach per channel: latest figures, their series, raw figures, sample plan",
                    "security": _BEARER,
                    "responses": {
                        "200": _json_body(_ref("StoryReach"), "Story reach"),
                        **_ERRORS_401,
                        "404": _error("No such story"),
                    },
                },
            },
            "/v1/reach": {
                "get": {
                    "summary": "Stories ranked by how much their reach (reads) grew over a period",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "description": "7d (that long ago), ISO 8601 or unix seconds; default: 7d before until",
                            "schema": {"type": "string"},
                        },
                        {"name": "until", "in": "query", "description": "default: now", "schema": {"type": "string"}},
                        {"name": "channel", "in": "query", "schema": {"type": "string"}},
                        {"name": "section", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                        {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
                    ],
                    "responses": {
                        "200": {
                            "description": "The ranking (CSV: one row per story × channel)",
                            "content": {
                                "application/json": {"schema": _ref("ReachReport")},
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _error("A query parameter is malformed or names no channel"),
                        **_ERRORS_401,
                    },
                }
            },
            "/reach/b.gif": {
                "get": {
                    "summary": "Page-read beacon of an owned output: counts one read, keeps nothing about the reader",
                    "parameters": [
                        {"name": "s", "in": "query", "required": True, "schema": {"type": "string", "maxLength": 200}},
                        {"name": "c", "in": "query", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "A 1x1 GIF, never cached, whether or not anything was counted",
                            "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
                        }
                    },
                }
            },
            "/v1/deliveries": {
                "get": {
                    "summary": "Deliveries, filtered, in id order with a cursor",
                    "security": _BEARER,
                    "parameters": [
                        {"name": "state", "in": "query", "schema": list_param},
                        {"name": "channel", "in": "query", "schema": list_param},
                        {"name": "story", "in": "query", "schema": {"type": "string"}},
                        {"name": "error_class", "in": "query", "schema": list_param},
                        {
                            "name": "since",
                            "in": "query",
                            "schema": {"type": "string", "description": "2h, 30m, 1d, ISO 8601 or unix seconds"},
                        },
                        {"name": "until", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json_body(
                            {
                                "type": "object",
                                "properties": {
                                    "deliveries": {"type": "array", "items": _ref("Delivery")},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            },
                            "A page of deliveries",
                        ),
                        "400": _error("A query parameter is not valid (the message names it)"),
                        **_ERRORS_401,
                    },
                }
            },
            "/v1/deliveries/{delivery_id}/replay": {
                "post": {
                    "summary": "Re-queue one failed or unknown delivery (delivered ones need force)",
                    "security": _BEARER,
                    "parameters": [
                        {
                            "name": "delivery_id",
                            "in": "path",
                            "required": True,
                            "schema": _DELIVERY_ID,
                        }
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"force": {"type": "boolean"}}}
                            }
                        },
                    },
                    "responses": {
                        "200": _json_body({"type": "object"}, "Re-queued"),
                        **_ERRORS_401,
                        "404": _error("No such delivery"),
                        "409": _error("Not replayable in its state (the message says why)"),
                        "422": _json_body(_ref("ValidationError"), "The body is not valid"),
                    },
                }
            },
            "/v1/replay": {
                "post": {
                    "summary": "Re-queue every delivery matching the filters (same selection as `syndicate replay`)",
                    "security": _BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "ids": {"type": "array", "items": _DELIVERY_ID},
                                        "channel": {"type": ["string", "array"]},
                                        "story": {"type": "string"},
                                        "since": {"type": "string"},
                                        "until": {"type": "string"},
                                        "state": {"type": ["string", "array"]},
                                        "error_class": {"type": ["string", "array"]},
                                        "force": {"type": "boolean"},
                                        "dry_run": {"type": "boolean"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json_body(
                            {
                                "type": "object",
                                "properties": {
                                    "selected": {"type": "integer"},
                                    "requeued": {"type": "integer"},
                                    "ids": {"type": "array", "items": {"type": "integer"}},
                                    "refused": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "How many were selected and re-queued",
                        ),
                        **_ERRORS_401,
                        "422": _json_body(_ref("ValidationError"), "The body is not valid"),
                    },
                }
            },
            "/v1/channels/{channel}/pause": {
                "post": {
                    "summary": "Pause a channel for every worker (until a time, for a duration, or until resumed)",
                    "security": _BEARER,
                    "parameters": [{"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "until": {"type": "string"},
                                        "for": {"type": "string"},
                                        "reason": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json_body(_ref("ChannelState"), "Paused"),
                        **_ERRORS_401,
                        "404": _error("No such channel"),
                        "422": _json_body(_ref("ValidationError"), "The body is not valid"),
                    },
                }
            },
            "/v1/channels/{channel}/resume": {
                "post": {
                    "summary": "Resume a paused channel",
                    "security": _BEARER,
                    "parameters": [{"name": "channel", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {
                        "200": _json_body(_ref("ChannelState"), "Resumed"),
                        **_ERRORS_401,
                        "404": _error("No such channel"),
                    },
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "up"}}}},
            "/readyz": {
                "get": {
                    "summary": "The store is reachable, migrations are current and it takes a write",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready, reason given: unreachable, schema behind, or no writes"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            **(channel_paths or {}),
        },
    }
