"""Runtime settings, the full shape: the nested PUT persists to settings.json and publishes
`settings.changed` (checked over Server-Sent Events)."""

from __future__ import annotations

import json

import pytest


def test_full_settings_shape(gp):
    body = gp.api("GET", "/api/settings").json()
    assert list(body) == ["theme", "notifications", "mitm", "conversations", "redactedHeaders"]
    assert {"enabled", "available", "backend", "supportsActions", "activeClaims"} <= set(body["notifications"])
    assert body["notifications"]["backend"] in ("notify-send", "none")
    if not body["notifications"]["available"]:
        assert "installHint" in body["notifications"]
    assert {"enabled", "bypass", "certGenerated", "certPath", "installed"} <= set(body["mitm"])
    assert body["conversations"] == {"enabled": True}


def test_nested_put_persists_and_publishes_settings_changed(gp):
    stream = gp.session.get(gp.api_url + "/api/events?types=settings.changed", stream=True, timeout=10,
                            headers={"Authorization": f"Bearer {gp.token}"})
    lines = stream.iter_lines(decode_unicode=True)
    assert next(lines).startswith("retry:")  # subscribed: the PUT below cannot be missed
    try:
        resp = gp.api("PUT", "/api/settings", json={"conversations": {"enabled": False}, "theme": "dark"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["conversations"] == {"enabled": False}
        event = None
        for _ in range(20):  # bounded: the event follows within a few lines
            line = next(lines)
            if line.startswith("data: "):
                event = json.loads(line[6:])
                break
        assert event is not None and event["conversations"] == {"enabled": False} and event["theme"] == "dark"
    finally:
        stream.close()
    stored = json.loads((gp.data_dir / "settings.json").read_text())
    assert stored["conversationsEnabled"] is False and stored["theme"] == "dark"
    gp.restart()
    assert gp.api("GET", "/api/settings").json()["conversations"] == {"enabled": False}


@pytest.mark.parametrize("body, needle", [
    ({"conversations": {"enabled": "no"}}, "enabled"),
    ({"conversations": True}, "conversations"),
    ({"conversations": {"enabled": True, "extra": 1}}, "extra"),
    ({"conversationsEnabled": "no"}, "conversationsEnabled"),  # the flat key is accepted (issue 16), typed
])
def test_bad_settings_are_400(gp, body, needle):
    resp = gp.api("PUT", "/api/settings", json=body)
    assert resp.status_code == 400 and needle in resp.json()["error"]
