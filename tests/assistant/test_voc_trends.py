"""Trend detection on replayed synthetic streams: an outage spike alerts within one window, calm does not."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from assistant.voc.trends import (
    RecentAlert,
    TextEvent,
    TrendConfig,
    apply_cooldown,
    detect_surges,
    replay,
    to_term_events,
)

START = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
# What customers of a mobile carrier ask on an ordinary day (our own writing), one of them about Wi-Fi
# not connecting, so 繋がる has a real baseline rate.
CALM = [
    "料金プランを変更したいです",
    "今月の請求額が高い気がします",
    "SIMカードが届いたのですが開通できますか",
    "APN設定のやり方を教えてください",
    "解約したいのですが解約金はかかりますか",
    "機種変更の手続きを知りたい",
    "データ容量を追加購入したい",
    "支払い方法をクレジットカードに変えたい",
    "MNPで乗り換えたいです",
    "eSIMに対応していますか",
    "海外でローミングは使えますか",
    "家族割の条件を教えて",
    "パスワードを忘れてしまいました",
    "住所を変更したい",
    "端末の保証について知りたい",
    "ポイントの使い方がわからない",
    "通信速度が遅い時間帯がある",
    "留守番電話の設定方法",
    "How do I change my plan?",
    "Can I pay by credit card?",
    "自宅のWi-Fiにつながらない時はどうすれば",
    "テザリングのやり方",
    "請求書を郵送してほしい",
    "名義変更の手続き",
    "SIMのサイズを変えたい",
]
OUTAGE = [
    "電話がつながらない",
    "さっきからネットにつながらないです",
    "朝から全然繋がりません",
    "圏外になってつながらない",
    "通信できない、つながらない",
    "スマホがつながらないのですが障害ですか",
]


def calm_stream(hours: int, per_hour: float, seed: int) -> list[TextEvent]:
    """Poisson arrivals of ordinary questions over ``hours`` from START."""
    rng = random.Random(seed)
    events, t = [], START
    end = START + timedelta(hours=hours)
    while True:
        t += timedelta(hours=rng.expovariate(per_hour))
        if t >= end:
            return events
        events.append(TextEvent(t, rng.choice(CALM)))


def spike(at: datetime, minutes: int, per_hour: float, seed: int) -> list[TextEvent]:
    rng = random.Random(seed)
    events, t = [], at
    while True:
        t += timedelta(hours=rng.expovariate(per_hour))
        if t >= at + timedelta(minutes=minutes):
            return events
        events.append(TextEvent(t, rng.choice(OUTAGE)))


CONFIG = TrendConfig(window=timedelta(hours=1), baseline=timedelta(hours=48), cooldown=timedelta(hours=6))
STEP = timedelta(minutes=15)


def test_an_outage_spike_alerts_within_one_window_once() -> None:
    outage_at = START + timedelta(hours=60, minutes=7)
    stream = calm_stream(72, 40, seed=1) + spike(outage_at, 90, per_hour=20, seed=2)
    alerts = replay(stream, START + timedelta(hours=48), START + timedelta(hours=72), STEP, CONFIG)
    assert len(alerts) == 1, [a.label for a in alerts]
    alert = alerts[0]
    assert alert.words[0] == "繋がる"
    assert outage_at < alert.window_end <= outage_at + CONFIG.window
    assert alert.count >= CONFIG.min_count
    assert alert.lead.ratio >= CONFIG.min_ratio and alert.lead.p_value < CONFIG.alpha
    assert all("つなが" in e or "繋が" in e for e in alert.examples)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_a_calm_stream_never_alerts(seed: int) -> None:
    # A busier afternoon (twice the traffic) must not alert either: shares are tested, not counts.
    stream = calm_stream(72, 40, seed=seed) + [
        e for e in calm_stream(72, 40, seed=seed + 100) if 12 <= e.at.hour < 16
    ]
    assert replay(stream, START + timedelta(hours=48), START + timedelta(hours=72), STEP, CONFIG) == []


def test_words_of_one_outage_form_one_topic() -> None:
    now = START + timedelta(hours=50)
    burst = [TextEvent(now - timedelta(minutes=m), "アンテナが立たず圏外でつながらない") for m in range(1, 9)]
    events = to_term_events(calm_stream(50, 30, seed=6) + burst)
    surges = detect_surges(events, now, CONFIG)
    assert len(surges) == 1
    assert set(surges[0].words) == {"アンテナ", "立つ", "圏外", "繋がる"}
    assert surges[0].lead.count == 8 and surges[0].count >= 8


def test_an_empty_baseline_alerts_on_nothing() -> None:
    now = START + timedelta(hours=1)
    burst = to_term_events([TextEvent(now - timedelta(minutes=m), "つながらない") for m in range(20)])
    assert detect_surges(burst, now, CONFIG) == []


def test_cooldown_suppresses_a_topic_sharing_a_word_until_it_expires() -> None:
    now = START + timedelta(hours=50)
    burst = [TextEvent(now - timedelta(minutes=m), "電話がつながらない") for m in range(1, 9)]
    surges = detect_surges(to_term_events(calm_stream(50, 30, seed=7) + burst), now, CONFIG)
    assert surges
    earlier = [RecentAlert(frozenset({"繋がる"}), now - timedelta(hours=2))]
    assert apply_cooldown(surges, earlier, now, CONFIG.cooldown) == []
    assert apply_cooldown(surges, earlier, now + timedelta(hours=5), CONFIG.cooldown) == surges


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        TrendConfig(alpha=0)
    with pytest.raises(ValueError, match="step"):
        replay([], START, START, timedelta(0), CONFIG)
