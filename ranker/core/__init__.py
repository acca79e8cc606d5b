"""The foundation every layer builds on: the error format, durations, the settings, the rules' condition
language, the decision record (DSJSON), the API's request bodies and ids, VW's options and its one adapter.
It imports nothing of ranker from the layers above.
"""
