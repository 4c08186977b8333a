"""Voice of the customer: surveys, trend alerts, knowledge gaps, content audit, learning, reports.

Modules: ``trends`` (surging words and topics in customer messages), ``alerts`` (persisting trend
alerts and posting them to a webhook), ``surveys`` (post-chat surveys), ``gaps`` (clusters of questions
the bot failed), ``audit`` (FAQ entries nobody sees, that fail, that are stale or duplicated),
``review`` (the review queue that turns failed questions into question variations or new entries),
``overlay`` (the learned-variations file in the knowledge-base folder), ``report`` (KPIs by day and path).

Errors: each module documents its own (``SurveyError`` and its children in ``surveys``,
``ReviewError`` and its children in ``review``); a webhook failure is recorded, never raised.
"""
