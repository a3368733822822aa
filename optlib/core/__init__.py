"""Plumbing: parameters, allowed values, paths, atomic writes, machine facts, the notebook set-up
and the pipeline that runs the chapters."""
