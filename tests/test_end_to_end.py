"""The one end-to-end flow: ingest -> index -> customers ask -> answer or escalate -> an operator
resolves -> surveys -> eval datasets from the database -> metrics -> one MLflow run.

Everything is the product's own: the default embedder, FAISS, the FastAPI app on a migrated SQLite
file, the operator and survey endpoints, the delivery module, ``eval.records`` and ``eval.run``, and
MLflow on a ``sqlite:///`` store in ``tmp_path``.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from assistant.db import upgrade
from assistant.delivery import deliver_due
from assistant.respond import Responder
from assistant.settings import Settings
from eval.datasets import save_dataset
from eval.metrics.e2e import e2e_report
from eval.records import (
    build_records_dataset,
    conversation_outcomes,
    suggestion_report,
    suggestion_rows,
    turn_latencies,
)
from eval.run import run_suite, suite_record
from eval.suite import SuiteConfig
from eval.track import TrackingConfig, get_run, log_run
from index.build import build_index
from index.store import load_index
from tests.assistant.seams import Api, start_api
from tests.conftest import SMALL_KB

OPERATOR = "/v1/operator"


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _answered_and_confirmed(api: Api) -> tuple[str, str]:
    """A customer asks, the bot answers from the knowledge base, thumbs up, close, survey. -> (id, source)"""
    cid = api.open()
    turn = _ok(api.say(cid, "SIMが届いたけど開通はどうやるの"))
    reply = turn["reply"]
    assert reply["decision"] == "answer" and reply["citations"], reply
    source = reply["citations"][0]["source_id"]
    feedback = {"message_id": reply["id"], "rating": "up"}
    _ok(api.client.post(f"/v1/conversations/{cid}/feedback", json=feedback, headers=api.headers()))
    _ok(api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers()))
    survey = {"csat": 5, "resolved": True}
    stored = _ok(api.client.post(f"/v1/conversations/{cid}/survey", json=survey, headers=api.headers()), 201)
    assert stored["path"] == "bot"
    return cid, source


def _escalated_and_resolved_by_a_person(api: Api) -> str:
    """A customer asks for a person; an operator claims, writes, resolves; the customer rates it."""
    op = api.headers("operator")
    _ok(api.client.post(f"{OPERATOR}/shift", json={"on_shift": True}, headers=op))
    cid = api.open()
    turn = _ok(api.say(cid, "オペレーターと話したい"))
    assert turn["status"] == "escalated" and turn["reply"]["decision"] == "escalate", turn
    assert [item["id"] for item in _ok(api.client.get(f"{OPERATOR}/queue", headers=op))] == [cid]
    _ok(api.client.post(f"{OPERATOR}/conversations/{cid}/claim", headers=op))
    drafts = _ok(api.client.get(f"{OPERATOR}/conversations/{cid}/suggestions", headers=op))
    text = "担当の佐藤です。ご契約内容を確認しますので、会員番号を教えてください。"
    body = {"text": text, "suggestion_set_id": drafts["id"]}  # drafts seen, none taken: "ignored"
    sent = _ok(api.client.post(f"{OPERATOR}/conversations/{cid}/messages", json=body, headers=op), 202)
    assert sent["deliver_at"] == sent["created_at"]  # undo_seconds=0: due at once
    deliver_due(api.services.database, api.clock())  # the delivery worker's own step (idempotent)
    transcript = _ok(api.client.get(f"/v1/conversations/{cid}", headers=api.headers()))
    assert [m["role"] for m in transcript["messages"]][-1] == "operator"
    resolution = {"outcome": "resolved", "tags": ["contract"], "answer_text": text}
    _ok(api.client.post(f"{OPERATOR}/conversations/{cid}/resolve", json=resolution, headers=op))
    survey = {"csat": 4, "resolved": True}
    stored = _ok(api.client.post(f"/v1/conversations/{cid}/survey", json=survey, headers=api.headers()), 201)
    assert stored["path"] == "operator"
    return cid


def test_ingest_to_mlflow(tmp_path: Path, embedder: Any) -> None:
    # Ingest and index a copy of the small knowledge base with the real default embedder.
    kb = tmp_path / "kb"
    shutil.copytree(SMALL_KB, kb)
    report = build_index(tmp_path / "index", [kb], embedder, root=kb)
    assert report.chunks > 0
    index = load_index(tmp_path / "index", embedder)
    settings = Settings(home=tmp_path, operators={"undo_seconds": 0})
    responder = Responder.from_settings(settings, index)

    # Customers ask through the real API on a migrated SQLite file.
    url = f"sqlite:///{tmp_path / 'madoguchi.db'}"
    upgrade(url)
    with start_api(url, tmp_path, responder, operators={"undo_seconds": 0}) as api:
        answered, source = _answered_and_confirmed(api)
        handed_off = _escalated_and_resolved_by_a_person(api)
        database = api.services.database

        # Eval datasets and end-to-end metrics from the database.
        chats = build_records_dataset(database, "chats")
        labels = build_records_dataset(database, "labels")
        with database.session() as session:
            e2e = e2e_report(conversation_outcomes(session), turn_latencies(session))
            e2e |= suggestion_report(suggestion_rows(session))

    rows = {r["id"]: r for r in chats.dataset.to_list()}
    assert rows[f"chat-{answered}"]["expected_sources"] == [source]
    assert not rows[f"chat-{answered}"]["should_escalate"]
    person = rows[f"chat-{handed_off}"]
    assert person["should_escalate"] and person["expected_reason"] == "no_knowledge"
    assert person["reference_answer"].startswith("担当の佐藤です")
    (label,) = labels.dataset.to_list()  # the thumbs-up on the bot's answer
    assert label["group"] == "thumbs" and label["expected_sources"] == [source]
    assert e2e["closed"] == 2 and e2e["automation_rate"] == 0.5 and e2e["verified_resolution_rate"] == 0.5
    assert e2e["csat_bot"] == 5 and e2e["csat_operator"] == 4
    assert e2e["turns"] == 2 and e2e["turns_bot_n"] == 1 and e2e["turns_operator_n"] == 1
    assert 0 < e2e["turn_latency_ms_p50"] <= e2e["turn_latency_ms_p99"] < 60_000
    assert e2e["suggestion_sets"] == 1 and e2e["suggestions_ignored"] == 1.0

    # Replay the resolved chats through the assistant's turn, measure, and log one MLflow run.
    save_dataset(chats, tmp_path / "chats")  # what `madoguchi eval datasets build --records` writes
    suite = SuiteConfig.model_validate(
        {
            "name": "end-to-end",
            "dataset": {"kind": "saved", "path": str(tmp_path / "chats")},
            "knowledge": {"kind": "sources", "paths": [str(kb)]},
            "ks": [1, 5],
            "answers": "reply",
        }
    )
    run = run_suite(suite, settings, embedder, dataset=chats, progress=False)
    m = run.metrics
    assert m["examples"] == 2 and m["failures"] == 0
    assert m["recall@5"] == 1.0  # the answered question finds the source the customer confirmed
    assert m["escalation_recall"] == 1.0  # the request for a person goes to a person again
    assert m["answer/examples"] == 1 and m["answer/string_similarity"] == pytest.approx(1.0)
    record = suite_record(run)
    record = replace(record, metrics={**record.metrics, **{f"e2e/{k}": v for k, v in e2e.items()}})
    tracking = TrackingConfig(f"sqlite:///{tmp_path / 'mlflow.db'}", "end-to-end")
    run_id = log_run(tracking, record)

    from mlflow.tracking import MlflowClient  # only to count the runs in the store

    client = MlflowClient(tracking_uri=tracking.uri)
    experiment = client.get_experiment_by_name("end-to-end")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    logged = get_run(tracking.uri, run_id)
    assert logged.params["dataset_fingerprint"] == chats.fingerprint
    assert logged.params["embedder"] == embedder.name and logged.params["llm"] == "extractive"
    assert logged.metrics["recall_at_5"] == 1.0 and logged.metrics["e2e/automation_rate"] == 0.5
    assert logged.metrics["e2e/csat_operator"] == 4 and logged.metrics["e2e/turns"] == 2
    assert logged.metrics["e2e/turn_latency_ms_p95"] == pytest.approx(e2e["turn_latency_ms_p95"])
