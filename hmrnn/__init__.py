"""hmrnn: Hierarchical Multiscale Recurrent Neural Networks (Chung, Ahn & Bengio, ICLR 2017).

The model library::

    HMLSTM          the HM-LSTM stack (UPDATE / COPY / FLUSH, boundary detectors)
    HMLSTMCell      one step of one layer: the equations of DESIGN.md
    GatedOutput     the gated output module (Eq. 11-12), on top of any stack
    LSTMStack, LayerNormLSTM, ClockworkRNN   the paper's baselines, same interface
    CharLM          embedding -> stack -> gated output -> softmax
"""

from .baselines import ClockworkRNN, LayerNormLSTM, LSTMStack
from .cell import HMLSTMCell, LayerState
from .charlm import CharLM, build_charlm
from .functional import binarize, hard_sigmoid, slope_schedule
from .hmlstm import HMLSTM, HMLSTMState
from .models import build_rnn
from .output import GatedOutput
from .types import RNNOutput, detach_state

__version__ = "0.1.0"

__all__ = [
    "HMLSTM", "CharLM", "ClockworkRNN", "GatedOutput", "HMLSTMCell", "HMLSTMState",
    "LSTMStack", "LayerNormLSTM", "LayerState", "RNNOutput", "binarize", "build_charlm",
    "build_rnn", "detach_state", "hard_sigmoid", "slope_schedule",
]
