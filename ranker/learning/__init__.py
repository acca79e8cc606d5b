"""The learning process: the trainer (learning, checkpoints, publication; between passes the evaluation
jobs and triage), Apprentice mode, and the supervisor that runs it beside gunicorn.
"""
