"""A handler's reply type comes from its return annotation, checked when the class is made."""

from __future__ import annotations

import pytest

from leveret.actors import Actor, AsyncContext, Context, actor, handler
from leveret.schemas import Message
from leveret.schemas.errors import DefinitionError, InvalidArgument, NotHandled


class Asked(Message, topic="tests.reply_types.asked"):
    n: int = 0


class Answer(Message, topic="tests.reply_types.answer"):
    n: int = 0


class Other(Message, topic="tests.reply_types.other"):
    pass


def test_the_return_annotation_declares_the_reply_type() -> None:
    class Answers(Actor, abstract=True):
        @handler
        def asked(self, msg: Asked) -> Answer:
            return Answer(n=msg.n)

        @handler
        async def other(self, msg: Other, ctx: AsyncContext) -> Answer | None: ...

    assert Answers.handlers[Asked.topic()].reply_type is Answer
    assert Answers.handlers[Other.topic()].reply_type is Answer


def test_no_message_in_the_annotation_answers_nothing() -> None:
    class Plain(Actor, queue="reply_types_plain"):
        @handler
        def asked(self, msg: Asked) -> None: ...

        @handler
        def other(self, msg: Other) -> bool:
            return True

    assert Plain.handlers[Asked.topic()].reply_type is None
    assert Plain.handlers[Other.topic()].reply_type is None
    with pytest.raises(NotHandled, match="annotate its return"):
        Plain.reply_handler_for(Asked())


@pytest.mark.parametrize("annotation", ["Answer | Other", "Answer | Other | None", "Message"])
def test_an_unusable_reply_type_is_refused_at_definition(annotation: str) -> None:
    namespace: dict[str, object] = {}
    source = f"""
class Broken(Actor, abstract=True):
    @handler
    def asked(self, msg: Asked) -> {annotation}: ...
"""
    with pytest.raises(DefinitionError, match="return annotation"):
        exec(source, {**globals(), "Message": Message}, namespace)


def test_function_actors_declare_it_too() -> None:
    @actor(queue="reply_types_function")
    def answer(msg: Asked) -> Answer:
        return Answer(n=msg.n)

    assert answer.actor_class.handlers[Asked.topic()].reply_type is Answer


def test_ctx_reply_checks_what_it_is_given() -> None:
    from leveret.schemas.envelope import Envelope

    ctx = Context(Envelope.new(Asked.topic()), actor="a", reply_type=Answer, asked=True)
    with pytest.raises(InvalidArgument, match="takes a Answer"):
        ctx.reply(Other())
    ctx.reply(Answer(n=1))
    with pytest.raises(InvalidArgument, match="twice"):
        ctx.reply(Answer(n=2))
    assert ctx.answer == Answer(n=1)
    without = Context(Envelope.new(Asked.topic()), actor="a")
    with pytest.raises(InvalidArgument, match="declares no reply type"):
        without.reply(Answer())
