"""The decision log read as data: each decision joined with its rewards (:mod:`ranker.logdata.join`, the
trainer's, the export's and the replay's), and DSJSON out of and into the log (:mod:`ranker.logdata.export`).
"""
