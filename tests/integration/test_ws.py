"""WebSocket job events: order, terminal events, replay with since_seq, submit and cancel over the socket."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from server.engine.runner import RuntimeLoader
from tests.integration.conftest import make_settings, png_bytes, running_app

pytestmark = pytest.mark.timeout(120)
TERMINAL = {"job.succeeded", "job.failed", "job.canceled"}


@pytest.fixture(scope="module")
def ws_client(runtime_loader: RuntimeLoader) -> Iterator[TestClient]:
    with running_app(runtime_loader, make_settings(auth={"api_keys": ["sk-ws"]})) as c:
        c.headers["Authorization"] = "Bearer sk-ws"
        yield c


def _events_until_terminal(ws: WebSocketTestSession, job_id: str) -> list[dict[str, Any]]:
    events = []
    while True:
        frame = ws.receive_json()
        if frame.get("job_id") != job_id or not str(frame.get("type", "")).startswith("job."):
            continue
        events.append(frame)
        if frame["type"] in TERMINAL:
            return events


def _check_order(events: list[dict[str, Any]], *, steps: int, n: int = 1) -> None:
    types = [e["type"] for e in events]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    assert seqs[0] == 1
    assert types[0] == "job.queued"
    assert "queue_position" in events[0]
    assert types[1] == "job.started"
    assert events[1]["batch_size"] >= 1
    progress = [e for e in events if e["type"] == "job.progress"]
    assert [(e["step"], e["total_steps"]) for e in progress] == [(k, steps) for k in range(1, steps + 1)]
    assert types.count("job.image") == n
    assert types[-1] == "job.succeeded"
    assert sum(t in TERMINAL for t in types) == 1
    assert types.index("job.image") > max(i for i, t in enumerate(types) if t == "job.progress")


def test_submit_over_socket_streams_typed_events_in_order(ws_client: TestClient) -> None:
    with ws_client.websocket_connect("/v1/ws") as ws:
        ws.send_json(
            {
                "type": "submit",
                "task": "generate",
                "client_ref": "c1",
                "request": {"prompt": "a kite", "size": "64x64", "seed": 8, "previews": True},
            }
        )
        submitted = ws.receive_json()
        assert submitted["type"] == "submitted"
        assert submitted["client_ref"] == "c1"
        events = _events_until_terminal(ws, submitted["job_id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    _check_order([e for e in events if e["type"] != "job.preview"], steps=4)
    previews = [e for e in events if e["type"] == "job.preview"]
    assert [p["step"] for p in previews] == [1, 2, 3, 4]
    assert previews[0]["format"] == "jpeg"
    assert base64.b64decode(previews[0]["data"]).startswith(b"\xff\xd8")
    image = next(e for e in events if e["type"] == "job.image")
    assert image["seed"] == 8
    assert image["b64_json"]
    assert len(image["rgb8_sha256"]) == 64


def test_subscribe_to_an_http_job_and_replay_since_seq(ws_client: TestClient) -> None:
    job = ws_client.post(
        "/v1/generate",
        json={"prompt": "a bell", "size": "64x64", "n": 2},
        headers={"Prefer": "respond-async"},
    ).json()
    with ws_client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "subscribe", "job_ids": [job["id"]]})
        live = _events_until_terminal(ws, job["id"])
    _check_order(live, steps=4, n=2)
    # reconnect and replay everything after seq 3: exactly the same events, same seq numbers
    with ws_client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "subscribe", "job_ids": [job["id"]], "since_seq": 3})
        replay = _events_until_terminal(ws, job["id"])
    assert replay == live[3:]
    # a finished job replayed from 0 gives the whole story again
    with ws_client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "subscribe", "job_ids": [job["id"]], "since_seq": {job["id"]: 0}})
        assert _events_until_terminal(ws, job["id"]) == live


def test_cancel_over_socket_gives_one_canceled_terminal_event(ws_client: TestClient) -> None:
    with ws_client.websocket_connect("/v1/ws") as ws:
        ws.send_json(
            {
                "type": "submit",
                "task": "generate",
                "request": {"prompt": "slow", "size": "128x128", "steps": 30},
            }
        )
        job_id = ws.receive_json()["job_id"]
        events = []
        while True:
            frame = ws.receive_json()
            if frame["type"] == "job.progress":
                ws.send_json({"type": "cancel", "job_id": job_id})
                break
            events.append(frame)
        rest = _events_until_terminal(ws, job_id)
    types = [e["type"] for e in events + rest]
    assert types[-1] == "job.canceled"
    assert sum(t in TERMINAL for t in types) == 1
    assert "job.image" not in types


def test_submit_edit_over_socket(ws_client: TestClient) -> None:
    image = base64.b64encode(png_bytes(64, 64)).decode()
    with ws_client.websocket_connect("/v1/ws") as ws:
        ws.send_json(
            {
                "type": "submit",
                "task": "edit",
                "request": {"prompt": "sepia", "image": image, "working_size": "64x64", "seed": 1},
            }
        )
        job_id = ws.receive_json()["job_id"]
        events = _events_until_terminal(ws, job_id)
    assert events[-1]["type"] == "job.succeeded"


def test_bad_frames_get_error_frames_not_a_closed_socket(ws_client: TestClient) -> None:
    with ws_client.websocket_connect("/v1/ws") as ws:
        ws.send_text("{nope")
        assert ws.receive_json()["error"]["code"] == "invalid_json"
        ws.send_json({"type": "dance"})
        assert ws.receive_json()["type"] == "error"
        ws.send_json({"type": "subscribe", "job_ids": ["job_unknown"]})
        frame = ws.receive_json()
        assert frame["type"] == "error"
        assert frame["error"]["type"] == "not_found"
        assert frame["job_id"] == "job_unknown"
        ws.send_json(
            {
                "type": "submit",
                "task": "generate",
                "client_ref": "bad",
                "request": {"prompt": "x", "size": "65x65"},
            }
        )
        frame = ws.receive_json()
        assert frame["error"]["type"] == "invalid_request"
        assert frame["client_ref"] == "bad"
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}


def test_socket_without_a_key_is_closed_with_4401(ws_client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as info,
        ws_client.websocket_connect("/v1/ws", headers={"Authorization": ""}) as ws,
    ):
        ws.receive_json()
    assert info.value.code == 4401
    with ws_client.websocket_connect("/v1/ws?api_key=sk-ws", headers={"Authorization": ""}) as ws:
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"
