"""Rank, Reward and Activate as a library: a loop's effective configuration, the VW engine, explanations,
discovery, multi-slot filling, the :class:`~ranker.serving.service.Service` and a loop's administration.
"""
