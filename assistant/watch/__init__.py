"""Watches: following jobs the assistant did not launch (`/watch container|pid|slurm`).

A watched job is not a run: nothing here touches the runs' lifecycle, queue or runner.
`sources.py` asks each kind of job how it is and reads its output, bounded; `output.py`
reads that output (hostile: any bytes, any length) into lines and the lines into the
protocol's progress and metric events; `poller.py` is the background loop that follows
every watch, records what changed in the event chain and tells the chat; `report.py`
writes the end report with its plot.
"""
