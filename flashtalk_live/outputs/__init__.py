"""Outputs: encoded packets fanned out to RTMP endpoints and local recordings that heal themselves.

`kinds` is the registry of output kinds (URL rules, imported by the settings); `manager` runs the outputs.
Nothing is imported here, so reading the URL rules never pulls in PyAV.
"""
