"""The backend contract: everything a backend may import, and nothing above it.

The hook specifications (:mod:`tle.contract.hookspecs`), the typed records the hooks take and return
(:mod:`tle.contract.records`), the experiment spec and the strategy grammar a backend reads
(:mod:`tle.contract.spec`, :mod:`tle.contract.strategy`, :mod:`tle.contract.initializers`), the per-epoch callback
(:mod:`tle.contract.loop`), the distributed records (:mod:`tle.contract.distributed`), the portable weight file
(:mod:`tle.contract.portable`) and the helpers backends share (:mod:`tle.contract.helpers`,
:mod:`tle.contract.head_fusion`, :mod:`tle.contract.seeds`). The bottom layer: it imports no other part of tle.
"""
