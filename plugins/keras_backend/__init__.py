"""The Keras 3 / TensorFlow backend of tle (import package ``tle_keras``).

Hook implementations live in :mod:`tle_keras.plugin`; nothing here imports
TensorFlow at import time.
"""
