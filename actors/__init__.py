"""An Erlang/OTP-style supervision library on trio.

It knows nothing of what its actors do: processes, HTTP and secrets belong to its users.
"""

from ._backoff import Backoff as Backoff
from ._backoff import Intensity as Intensity
from ._backoff import RestartWindow as RestartWindow
from ._bus import Envelope as Envelope
from ._bus import EventBus as EventBus
from ._bus import SubscriberLagged as SubscriberLagged
from ._bus import Subscription as Subscription
from ._event import Event as Event
from ._lifecycle import ChildAdded as ChildAdded
from ._lifecycle import ChildExited as ChildExited
from ._lifecycle import ChildGaveUp as ChildGaveUp
from ._lifecycle import ChildKilled as ChildKilled
from ._lifecycle import ChildRemoved as ChildRemoved
from ._lifecycle import ChildStarted as ChildStarted
from ._lifecycle import ChildStopped as ChildStopped
from ._lifecycle import ChildStopping as ChildStopping
from ._lifecycle import RestartScheduled as RestartScheduled
from ._lifecycle import SupervisorEscalated as SupervisorEscalated
from ._mailbox import ActorRef as ActorRef
from ._mailbox import CallTimeout as CallTimeout
from ._mailbox import Mailbox as Mailbox
from ._mailbox import MailboxFull as MailboxFull
from ._mailbox import Reply as Reply
from ._spec import ChildContext as ChildContext
from ._spec import ChildSpec as ChildSpec
from ._spec import ChildState as ChildState
from ._spec import ExitInfo as ExitInfo
from ._spec import NodeStatus as NodeStatus
from ._spec import Restart as Restart
from ._spec import StartFunction as StartFunction
from ._supervisor import ChildExists as ChildExists
from ._supervisor import Escalation as Escalation
from ._supervisor import Strategy as Strategy
from ._supervisor import Supervisor as Supervisor
from ._supervisor import UnknownChild as UnknownChild
