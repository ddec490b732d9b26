"""hmrnn: Hierarchical Multiscale Recurrent Neural Networks (Chung, Ahn & Bengio, ICLR 2017).

The model library::

    HMLSTM          the HM-LSTM stack (UPDATE / COPY / FLUSH, boundary detectors)
    HMLSTMCell      one step of one layer: the equations of docs/model.md
    GatedOutput     the gated output module (Eq. 11-12), on top of any stack
    LSTMStack, LayerNormLSTM, ClockworkRNN   the paper's baselines, same interface
    CharLM          embedding -> stack -> gated output -> softmax
    load            a trained character model in one line: ``hmrnn.load("runs/default")``
"""

from hmrnn.model.baselines import ClockworkRNN, LayerNormLSTM, LSTMStack
from hmrnn.model.cell import HMLSTMCell, LayerState
from hmrnn.model.charlm import CharLM
from hmrnn.model.functional import binarize, hard_sigmoid, slope_schedule
from hmrnn.model.hmlstm import HMLSTM, HMLSTMState
from hmrnn.model.output import GatedOutput
from hmrnn.model.registry import build_rnn
from hmrnn.model.types import RNNOutput, detach_state
from hmrnn.tasks.charlm.build import build_charlm
from hmrnn.tasks.charlm.pretrained import CharModel, load

__version__ = "0.1.0"

__all__ = [
    "HMLSTM", "CharLM", "CharModel", "ClockworkRNN", "GatedOutput", "HMLSTMCell", "HMLSTMState",
    "LSTMStack", "LayerNormLSTM", "LayerState", "RNNOutput", "binarize", "build_charlm",
    "build_rnn", "detach_state", "hard_sigmoid", "load", "slope_schedule",
]
