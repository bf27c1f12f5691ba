"""Notification templates (``schemas/notify_templates.py``), amounts for people
(``schemas/money.py``) and recipients (``schemas/recipients.py``). Pure: no services."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from base.errors import ConfigError, InvalidEvent, PermanentError
from schemas.money import currency_exponent, format_minor
from schemas.notifications import Channel
from schemas.notify_templates import (
    NotificationTemplate,
    TemplateDataError,
    TemplateRenderError,
    UnknownTemplate,
    VariableSpec,
    default_catalog,
    load_catalog,
)
from schemas.recipients import (
    MAX_PUSH_TOKEN,
    Contact,
    UserRecipient,
    parse_recipient,
)

REQUIRED_CODES = (
    "ORDER_PAID",
    "PAYMENT_FAILED",
    "REFUND_ISSUED",
    "INVOICE_PAYMENT_FAILED",
    "LEAD_RECEIVED",
)
SAMPLES: dict[str, Any] = {
    "name": "Ada",
    "order_id": "ord_42",
    "invoice_id": "in_42",
    "lead_id": "lead_42",
    "partner_id": "acme",
    "lead_name": "Grace",
    "amount_minor": 2500,
    "currency": "usd",
    "reason": "card declined",
}
CATALOG = default_catalog()


def _sample_for(template: NotificationTemplate) -> dict[str, Any]:
    return {name: SAMPLES[name] for name in template.variables}


# --- the shipped templates ------------------------------------------------------------


@pytest.mark.parametrize("code", REQUIRED_CODES)
@pytest.mark.parametrize("channel", list(Channel))
def test_every_required_code_has_every_channel(code: str, channel: Channel) -> None:
    assert CATALOG.get(code, channel).code == code


@pytest.mark.parametrize("template", list(CATALOG), ids=repr)
def test_every_template_renders_its_sample_data(template: NotificationTemplate) -> None:
    rendered = template.render(_sample_for(template))
    assert rendered.text.strip()
    assert "{{" not in rendered.text
    assert "{%" not in rendered.text
    if "amount_minor" in template.variables:
        assert "25.00 USD" in rendered.text
    if template.channel is Channel.EMAIL:
        assert rendered.subject
        assert "\n" not in rendered.subject
        assert rendered.html
        assert rendered.html.lstrip().startswith("<")
        assert rendered.title is None
    elif template.channel is Channel.PUSH:
        assert rendered.title
        assert "\n" not in rendered.title
        assert rendered.subject is None
        assert rendered.html is None
    else:
        assert rendered.subject is rendered.html is rendered.title is None


@pytest.mark.parametrize("template", list(CATALOG), ids=repr)
def test_every_template_renders_without_its_optional_variables(
    template: NotificationTemplate,
) -> None:
    required = {n: SAMPLES[n] for n, spec in template.variables.items() if spec.required}
    assert template.render(required).text.strip()


def test_html_escapes_user_data_and_text_does_not() -> None:
    template = CATALOG.get("ORDER_PAID", Channel.EMAIL)
    data = {**_sample_for(template), "name": "<script>alert('x')</script> & co"}
    rendered = template.render(data)
    assert rendered.html is not None
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in rendered.html
    assert "<script>alert('x')</script> & co" in rendered.text  # plain text stays plain


def test_a_subject_is_one_line_whatever_the_data() -> None:
    template = CATALOG.get("ORDER_PAID", Channel.EMAIL)
    rendered = template.render({**_sample_for(template), "order_id": "ord\r\nBcc: x@example.com"})
    assert rendered.subject == "Order ord Bcc: x@example.com is paid"


def test_amounts_follow_the_currency() -> None:
    template = CATALOG.get("ORDER_PAID", Channel.SMS)
    text = template.render({"order_id": "o", "amount_minor": 2500, "currency": "jpy"}).text
    assert "2,500 JPY" in text


# --- lookups and data checks ----------------------------------------------------------


def test_unknown_template_is_named() -> None:
    with pytest.raises(UnknownTemplate, match="unknown template 'ORDER_PAYD'") as caught:
        CATALOG.get("ORDER_PAYD", Channel.EMAIL)
    assert caught.value.field == "template"
    assert isinstance(caught.value, InvalidEvent)


def test_unknown_channel_is_named() -> None:
    with pytest.raises(UnknownTemplate, match="unknown channel 'FAX'") as caught:
        CATALOG.get("ORDER_PAID", "FAX")
    assert caught.value.field == "channel"


def test_a_code_without_the_channel_says_which_it_has(tmp_path: Path) -> None:
    (tmp_path / "ONLY_SMS.sms.toml").write_text('[variables]\n[message]\ntext = "hi"\n')
    with pytest.raises(UnknownTemplate, match="ONLY_SMS has no EMAIL version \\(it has SMS\\)"):
        load_catalog(tmp_path).get("ONLY_SMS", Channel.EMAIL)


def test_a_missing_variable_is_named() -> None:
    template = CATALOG.get("ORDER_PAID", Channel.EMAIL)
    data = _sample_for(template)
    del data["amount_minor"]
    with pytest.raises(TemplateDataError, match=r"needs data\.amount_minor") as caught:
        template.check(data)
    assert caught.value.field == "data.amount_minor"
    with pytest.raises(TemplateDataError):
        template.render(data)


def test_null_counts_as_missing_for_a_required_variable() -> None:
    template = CATALOG.get("ORDER_PAID", Channel.SMS)
    with pytest.raises(TemplateDataError, match=r"data\.order_id"):
        template.check({"order_id": None, "amount_minor": 1, "currency": "usd"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("amount_minor", 25.0, "must be an integer"),
        ("amount_minor", "2500", "must be an integer"),
        ("amount_minor", True, "must be an integer"),
        ("currency", "dollars", "three-letter ISO 4217 code"),
        ("order_id", 42, "must be a string"),
    ],
)
def test_a_variable_of_the_wrong_kind_is_named(name: str, value: object, message: str) -> None:
    template = CATALOG.get("ORDER_PAID", Channel.SMS)
    data = {**_sample_for(template), name: value}
    with pytest.raises(TemplateDataError, match=message) as caught:
        template.check(data)
    assert caught.value.field == f"data.{name}"


def test_check_normalises_and_drops_undeclared_data() -> None:
    template = CATALOG.get("ORDER_PAID", Channel.SMS)
    checked = template.check({**_sample_for(template), "extra": "ignored", "currency": "eur"})
    assert checked == {"order_id": "ord_42", "amount_minor": 2500, "currency": "EUR"}


# --- the sandbox and the loader -------------------------------------------------------


def _template(text: str, **variables: str) -> NotificationTemplate:
    specs = {
        name: VariableSpec(name, kind.removesuffix("?"), not kind.endswith("?"))  # type: ignore[arg-type]
        for name, kind in variables.items()
    }
    return NotificationTemplate("T", Channel.SMS, specs, {"text": text})


@pytest.mark.parametrize(
    "text",
    [
        "{{ name.__class__.__mro__ }}",
        "{{ name.format.__globals__ }}",
        "{{ (name.__class__.__base__.__subclasses__()) }}",
    ],
)
def test_the_sandbox_refuses_unsafe_attribute_access(text: str) -> None:
    with pytest.raises(TemplateRenderError, match=r"is unsafe"):
        _template(text, name="text").render({"name": "x"})


def test_a_template_cannot_use_an_undeclared_variable() -> None:
    with pytest.raises(ConfigError, match="uses secret, not declared"):
        _template("{{ name }} {{ secret }}", name="text")


def test_a_bad_money_value_in_a_template_is_a_render_error() -> None:
    template = _template("{{ n | money('usd') }}", n="text")
    with pytest.raises(TemplateRenderError, match="money filter") as caught:
        template.render({"n": "12"})
    assert isinstance(caught.value, PermanentError)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("order_paid.email.toml", "", "named <CODE>.<channel>.toml"),
        ("X.fax.toml", "", "named <CODE>.<channel>.toml"),
        ("X.sms.toml", "[message]\ntext = \n", "Invalid value"),
        ("X.sms.toml", '[message]\ntext = "{{ x"\n', "text:"),
        ("X.sms.toml", '[variables]\nx = "float"\n[message]\ntext = "a"\n', "kinds are"),
        ("X.email.toml", '[message]\ntext = "a"\n', "missing \\['subject', 'html'\\]"),
        ("X.sms.toml", '[message]\ntext = "a"\nhtml = "b"\n', "unexpected \\['html'\\]"),
        ("X.sms.toml", "[variables]\n", "no \\[message\\] table"),
    ],
)
def test_the_loader_names_the_bad_file(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=message) as caught:
        load_catalog(tmp_path)
    assert name in str(caught.value)


# --- amounts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (2500, "usd", "25.00 USD"),
        (0, "usd", "0.00 USD"),
        (5, "inr", "0.05 INR"),
        (123456789, "EUR", "1,234,567.89 EUR"),
        (2500, "jpy", "2,500 JPY"),
        (2500, "krw", "2,500 KRW"),
        (1500, "kwd", "1.500 KWD"),
        (-150, "bhd", "-0.150 BHD"),
        (12345, "xyz", "123.45 XYZ"),
    ],
)
def test_format_minor(amount: int, currency: str, text: str) -> None:
    assert format_minor(amount, currency) == text


@pytest.mark.parametrize(("amount", "currency"), [(1.5, "usd"), (True, "usd"), (1, "us"), (1, 7)])
def test_format_minor_refuses_what_is_not_an_amount(amount: object, currency: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # both reasons are ValueError
        format_minor(amount, currency)


def test_currency_exponent() -> None:
    assert (currency_exponent("usd"), currency_exponent("JPY"), currency_exponent("omr")) == (
        2,
        0,
        3,
    )


# --- recipients -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "channel", "expected"),
    [
        ("ada@example.com", Channel.EMAIL, Contact(Channel.EMAIL, "ada@example.com")),
        ("Ada@EXAMPLE.COM", Channel.EMAIL, Contact(Channel.EMAIL, "Ada@example.com")),
        ("+14155550100", Channel.SMS, Contact(Channel.SMS, "+14155550100")),
        ("+919876543210", Channel.SMS, Contact(Channel.SMS, "+919876543210")),
        ("push:fcm:APA91b-x_y", Channel.PUSH, Contact(Channel.PUSH, "fcm:APA91b-x_y")),
        ("user_1", Channel.EMAIL, UserRecipient("user_1")),
        ("user_1", Channel.SMS, UserRecipient("user_1")),
        ("user_1", Channel.PUSH, UserRecipient("user_1")),
        # A contact of another channel's shape is no contact here: a user id.
        ("+14155550100", Channel.PUSH, UserRecipient("+14155550100")),
    ],
)
def test_parse_recipient(to: str, channel: Channel, expected: object) -> None:
    assert parse_recipient(to, channel) == expected


@pytest.mark.parametrize(
    ("to", "channel", "message"),
    [
        ("ada@@example.com", Channel.EMAIL, "not a valid email address"),
        ("ada@", Channel.EMAIL, "not a valid email address"),
        ("Ada <ada@example.com>", Channel.EMAIL, "not a valid email address"),
        ("+1415", Channel.SMS, "not an E.164 phone number"),
        ("+1 415 555 0100", Channel.SMS, "not an E.164 phone number"),
        ("+04155550100", Channel.SMS, "not an E.164 phone number"),
        ("+1234567890123456", Channel.SMS, "not an E.164 phone number"),
        ("push:", Channel.PUSH, "push token after 'push:' is empty"),
        ("push:a b", Channel.PUSH, "printable ASCII without spaces"),
        ("push:é", Channel.PUSH, "printable ASCII without spaces"),
        ("push:" + "a" * (MAX_PUSH_TOKEN + 1), Channel.PUSH, "longer than 4096"),
        ("   ", Channel.EMAIL, "to is blank: give a user id or an email address"),
        ("u" * 257, Channel.SMS, "longer than 256"),
        ("user\x00", Channel.PUSH, "printable"),
    ],
)
def test_a_bad_recipient_is_named(to: str, channel: Channel, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message) as caught:
        parse_recipient(to, channel)
    assert caught.value.field == "to"


def test_a_recipient_must_be_a_string_on_a_known_channel() -> None:
    with pytest.raises(InvalidEvent, match="to must be a string"):
        parse_recipient(42, Channel.EMAIL)
    with pytest.raises(InvalidEvent, match="unknown channel") as caught:
        parse_recipient("u", "FAX")
    assert caught.value.field == "channel"
