"""Active learning: label what the model is least sure about, update it, repeat.

``learn_pool`` labels diverse batches of the most uncertain structures of a pool
(``gapfit.pool_mode``); ``learn_otf`` labels the frames of MD or a relaxation driven
by the model where its force stds pass a threshold (``gapfit.otf_mode``). Both run a
``Learner`` (``gapfit.learner``): the labelled frames, the model, the log and the
learning curve, checkpointed in a work directory after every step.
"""

from gapfit.learner import Learner, read_structures
from gapfit.otf_mode import learn_otf
from gapfit.pool_mode import learn_pool

__all__ = ["Learner", "learn_otf", "learn_pool", "read_structures"]
