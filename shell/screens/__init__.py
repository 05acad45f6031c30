"""The shell's screens: process monitor, modules, memfs browser, tool approval."""

from .approval import ApprovalScreen
from .memfs import MemfsScreen
from .modules import ModulesScreen
from .top import TopScreen

__all__ = ["ApprovalScreen", "MemfsScreen", "ModulesScreen", "TopScreen"]
