"""The shell's widgets: chat log, chat message, prompt input, status line."""

from .chat_log import ChatLog
from .chat_message import ChatMessage
from .prompt_input import PromptInput
from .status_line import StatusLine

__all__ = ["ChatLog", "ChatMessage", "PromptInput", "StatusLine"]
