"""Static files in production: WhiteNoise's compressed, hashed copies, with the imports between
the chat page's ES modules rewritten to the hashed names too.

Django's manifest storage rewrites CSS ``url()`` references by default but JavaScript module
imports only with ``support_js_module_import_aggregation`` (a documented attribute, off by
default). Without it the hashed ``chat.<hash>.js`` imports ``./sidebar.js`` by its plain name,
which is served without a far-future cache and may be newer or older than the module that
imports it after a deploy.
"""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    support_js_module_import_aggregation = True
