"""Delivery of the outbox: approved messages sent by SMTP or a webhook, each at most once
(:mod:`ranker.outbox.delivery`), with its ``[outbox]`` settings and the ``ranker outbox`` commands."""
