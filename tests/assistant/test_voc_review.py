"""The review queue through the API on each database backend: collect, link, draft, dismiss, refuse."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from assistant.models import Conversation, ReviewItem
from assistant.transcripts import BotReply, add_bot_reply, add_message
from tests.assistant.seams import Api


def _failed(api: Api, text: str, operator_says: str | None = None) -> str:
    cid = api.open()
    api.say(cid, "担当者と話したいです")  # a request for a person: never queued
    with api.services.database.session() as session:
        conversation = session.get_one(Conversation, uuid.UUID(cid))
        asked = add_message(session, conversation.id, "customer", text)
        add_bot_reply(session, conversation, asked, BotReply("…", "take_message", 0.1, ("low_confidence",)))
        if operator_says:
            add_message(session, conversation.id, "operator", operator_says)
    return cid


def test_the_review_queue_through_the_api(api: Api) -> None:
    _failed(api, "請求書が欲しい")
    _failed(api, "番号そのままで他社に移りたい", operator_says="MNP予約番号を発行してください。")
    _failed(api, "今日は天気がいいですね")
    api.clock.now = datetime.now(UTC)
    staff = api.headers("operator")
    collected = api.client.post("/v1/voc/review/collect?days=1", headers=staff)
    assert collected.status_code == 200 and collected.json() == {"queued": 3}
    assert api.client.post("/v1/voc/review/collect?days=1", headers=staff).json() == {"queued": 0}
    queue = {i["question"]: i for i in api.client.get("/v1/voc/review", headers=staff).json()}
    assert set(queue) == {"請求書が欲しい", "番号そのままで他社に移りたい", "今日は天気がいいですね"}
    assert queue["請求書が欲しい"]["reasons"] == ["escalated", "low_confidence"]

    bill, mnp, chat = (queue[q]["id"] for q in queue)
    unknown = api.client.post(f"/v1/voc/review/{bill}/link", json={"faq_id": "no-such"}, headers=staff)
    assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_faq_entry"
    linked = api.client.post(f"/v1/voc/review/{bill}/link", json={"faq_id": "receipt"}, headers=staff)
    assert linked.status_code == 200 and linked.json()["status"] == "linked"
    again = api.client.post(f"/v1/voc/review/{bill}/dismiss", headers=staff)
    assert again.status_code == 409 and again.json()["code"] == "already_reviewed"

    drafted = api.client.post(f"/v1/voc/review/{mnp}/draft", json={}, headers=staff)
    assert drafted.status_code == 200, drafted.text
    assert drafted.json()["draft_answer"] == "MNP予約番号を発行してください。"
    nothing = api.client.post(f"/v1/voc/review/{chat}/draft", json={}, headers=staff)
    assert nothing.status_code == 422 and nothing.json()["code"] == "nothing_to_draft"
    dismissed = api.client.post(f"/v1/voc/review/{chat}/dismiss", headers=api.headers("admin"))
    assert dismissed.json()["status"] == "dismissed"

    assert api.client.get("/v1/voc/review", headers=staff).json() == []
    linked_list = api.client.get("/v1/voc/review?status=linked", headers=staff).json()
    assert [i["faq_id"] for i in linked_list] == ["receipt"]
    assert api.count(ReviewItem, status="drafted") == 1


def test_review_endpoints_refuse_bad_requests(api: Api) -> None:
    staff = api.headers("operator")
    assert api.client.get("/v1/voc/review", headers=api.headers("customer")).status_code == 403
    assert api.client.get("/v1/voc/review?status=lost", headers=staff).status_code == 422
    missing = api.client.post("/v1/voc/review/999/dismiss", headers=staff)
    assert missing.status_code == 404 and missing.json()["code"] == "review_item_not_found"
    assert api.client.post("/v1/voc/review/0/dismiss", headers=staff).status_code == 422
    assert api.client.post("/v1/voc/review/1/link", json={"faq_id": "a b"}, headers=staff).status_code == 422
    assert api.client.post("/v1/voc/review/1/link", json={}, headers=staff).status_code == 422
    assert api.client.post("/v1/voc/review/1/draft", json={"answer": " "}, headers=staff).status_code == 422
