"""Frontends: turn a build definition (a Dockerfile) into build steps.

Pure code: nothing here runs a process or touches the network.
"""
