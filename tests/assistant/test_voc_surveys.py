"""The post-chat survey through the API, on each database backend, with the real responder."""

from __future__ import annotations

import uuid

import pytest

from assistant.models import SurveyResponse
from assistant.transcripts import add_message
from assistant.voc.surveys import SurveyAnswers
from tests.assistant.seams import Api

FULL = {
    "csat": 6, "ces": 9, "nps": 10, "resolved": True,
    "reasons": ["faq_hard_to_understand"], "comment": "  とても助かりました\r\n  ",
}  # fmt: skip


def _closed_chat(api: Api, text: str = "SIMが届いたけど使えない") -> str:
    cid = api.open()
    assert api.say(cid, text).status_code == 200
    assert api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers()).status_code == 200
    return cid


def _survey(api: Api, cid: str, body: dict[str, object], who: str = "customer") -> object:
    return api.client.post(f"/v1/conversations/{cid}/survey", json=body, headers=api.headers(who))


def test_a_bot_chat_survey_links_path_and_cited_entries(api: Api) -> None:
    cid = _closed_chat(api)
    transcript = api.client.get(f"/v1/conversations/{cid}", headers=api.headers()).json()
    cited = [c["source_id"] for m in transcript["messages"] for c in m.get("citations") or []]
    assert cited, "the real responder cites the SIM activation entry"
    response = _survey(api, cid, FULL)
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["path"] == "bot" and out["csat"] == 6 and out["ces"] == 9 and out["nps"] == 10
    assert out["cited_source_ids"] == list(dict.fromkeys(cited))
    assert out["comment"] == "とても助かりました" and out["reasons"] == ["faq_hard_to_understand"]
    assert api.count(SurveyResponse, conversation_id=uuid.UUID(cid)) == 1


def test_a_chat_an_operator_spoke_in_is_on_the_operator_path(api: Api) -> None:
    cid = api.open()
    api.say(cid, "担当者と話したいです")
    with api.services.database.session() as session:
        add_message(session, uuid.UUID(cid), "operator", "担当の佐藤です。ご用件を伺います。")
    api.client.post(f"/v1/conversations/{cid}/close", headers=api.headers())
    response = _survey(api, cid, {"csat": 2, "resolved": False, "reasons": ["took_too_long"]})
    assert response.status_code == 201, response.text
    assert response.json()["path"] == "operator"


def test_the_survey_is_answered_once(api: Api) -> None:
    cid = _closed_chat(api)
    assert _survey(api, cid, {"nps": 7}).status_code == 201
    second = _survey(api, cid, {"nps": 9})
    assert second.status_code == 409 and second.json()["code"] == "survey_already_answered"


def test_only_a_closed_conversation_of_the_key_takes_a_survey(api: Api) -> None:
    open_cid = api.open()
    response = _survey(api, open_cid, {"csat": 4})
    assert response.status_code == 409 and response.json()["code"] == "conversation_not_closed"
    cid = _closed_chat(api)
    assert _survey(api, cid, {"csat": 4}, who="other").status_code == 404
    assert _survey(api, cid, {"csat": 4}, who="operator").status_code == 403
    assert _survey(api, str(uuid.uuid4()), {"csat": 4}).status_code == 404


BAD = [
    {"csat": 0}, {"csat": 7}, {"ces": 11}, {"ces": -1}, {"nps": 11}, {"csat": "5"}, {"csat": 4.5},
    {"resolved": "yes"}, {"reasons": ["no_such_reason"]}, {"comment": "x" * 2001}, {"stars": 5}, {},
    {"comment": "   "},
]  # fmt: skip


def test_bad_values_are_refused_with_422(api: Api) -> None:
    cid = _closed_chat(api)
    for body in BAD:
        response = _survey(api, cid, body)
        assert response.status_code == 422, (body, response.text)
    assert api.count(SurveyResponse) == 0
    assert _survey(api, cid, {"csat": 5}).status_code == 201  # the bad ones did not use up the survey


def test_survey_answers_check_their_ranges() -> None:
    with pytest.raises(ValueError, match="csat must be 1-6, got 7"):
        SurveyAnswers(csat=7)
    with pytest.raises(ValueError, match="no answer"):
        SurveyAnswers()
    assert SurveyAnswers(resolved=False).resolved is False
