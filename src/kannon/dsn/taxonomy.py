"""The bounce-reason classifier: a table of message-text patterns per reason (the usual phrasings
of Postfix, Sendmail, Exim, qmail, Exchange, Gmail, Yahoo, ... rejections) and the precedence rules
that combine them with the RFC 3463 status code, the SMTP reply code and the SMTP command.

Precedence, and why:
1. Specific causes stated in words (full mailbox, disabled account, DMARC, rate limits, ...) win
   over the status code, because MTAs often send a generic code (5.1.1, 5.7.1, 5.0.0) with a
   precise explanation.
2. "No such user" only proves a dead address when it answered RCPT TO (or came from the reporting
   system's own directory). The same words after DATA come from content filters that pretend the
   user is unknown, so they mean "filtered" - a soft verdict that keeps the address alive.
3. Then the status code, then broad fallbacks (command, diagnostic type, action).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from kannon.dsn.codes import is_generic, status_reason


def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in parts))


# Patterns run on lower-cased text with runs of whitespace collapsed to one space.
PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    "mailboxfull": _rx(
        r"mailbox (?:is |was )?(?:full|over ?quota)",
        r"mail ?box.{0,40}(?:exceed|quota|too (?:big|large|many))",
        r"full mailbox",
        r"(?:user|account|recipient|mailbox)(?:'s)? (?:is |has )?"
        r"(?:over|exceeded (?:the |his |her |their )?)(?:quota|storage)",
        r"quota (?:exceeded|violation|exceed)",
        r"over ?quota",
        r"over (?:the |your |their )?(?:allowed |storage |mailbox )?quota",
        r"disk quota",
        r"storage (?:quota|allocation|space)",
        r"out of (?:storage|disk) space",
        r"mail ?folder is full",
        r"no space left on device",
        r"too many messages (?:in|on)",
        r"user's space has been used up",
        r"boite (?:du destinataire )?pleine",
        r"postfach voll",
        r"casella (?:di posta )?piena",
    ),
    "exceedlimit": _rx(
        r"recip(?:ient)?sizelimit",
        r"too large for this recipient",
        r"exceeds? (?:the )?(?:recipient'?s?|per-recipient|mailbox) (?:size )?limit",
    ),
    "mesgtoobig": _rx(
        r"message (?:is )?too (?:big|large)",
        r"message (?:size|length) (?:exceeds|is too|greater)",
        r"(?:mail|message) size limit",
        r"exceeds? (?:the )?(?:maximum|max) (?:allowed )?(?:message )?size",
        r"size exceeds (?:fixed )?(?:maximum|limit)",
        r"message exceeded (?:the )?size",
    ),
    "suspend": _rx(
        r"(?:account|mailbox|user|recipient|address)(?: is| has been| was)?"
        r"(?: currently| temporarily| now)? "
        r"(?:suspended|disabled|deactivated|inactive|frozen|locked|terminated|blocked|discontinued)",
        r"temporar(?:y|ily) locked",
        r"(?:disabled|inactive|suspended|archived|deactivated) (?:recipient|account|user|mailbox)",
        r"email account that you tried to reach is (?:disabled|inactive)",
        r"mailbox unavailable or access denied",
        r"le compte du destinataire est bloque",
        r"boite du destinataire archivee",
    ),
    "hasmoved": _rx(
        r"(?:mailbox|user|recipient|address|account) (?:has )?moved",
        r"no longer (?:on (?:this |the )?server|at this (?:address|organization)|with (?:us|this))",
        r"not our user",
        r"changed (?:his|her|their) (?:e-?mail )?address",
    ),
    "norelaying": _rx(
        r"relay(?:ing)? (?:access )?(?:denied|not (?:permitted|allowed)|prohibited)",
        r"(?:unable|not permitted|not allowed) to relay",
        r"no relaying",
        r"we do not relay",
        r"as a relay",
        r"relaying mail to \S+ is not allowed",
        r"email address is not verified",
        r"not (?:an open relay|configured to relay)",
        r"we don'?t handle mail for",
        r"isn'?t in my list of allowed rcpthosts",
    ),
    "authfailure": _rx(
        r"\bdmarc\b.{0,60}(?:polic|fail|reject|verification)",
        r"(?:polic|fail|reject|verification).{0,30}\bdmarc\b",
        r"\bspf\b.{0,20}(?:fail|violation)",
        r"bad spf records?",
        r"fails? to pass (?:the )?spf",
        r"sender policy framework",
        r"\bdkim\b.{0,40}(?:fail|invalid|signature|validation)",
        r"authentication checks? (?:failed|fail)",
        r"fails? to pass (?:\S+ )?authentication",
        r"does not have authentication information",
        r"unauthenticated (?:e-?mail|message)s? from",
        r"doesn'?t meet the (?:required )?authentication",
        r"not pass (?:spf|dkim|dmarc)",
        r"//spf\.",
    ),
    "badreputation": _rx(
        r"(?:ip|sender|domain|sending)(?: address)?(?:'s)? reputation",
        r"due to (?:the |poor |low |bad )?(?:ip |sender |domain )?reputation",
        r"(?:poor|bad|low) reputation",
        r"temporarily deferred due to (?:unexpected volume or )?user complaints",
    ),
    "speeding": _rx(
        r"receiving mail (?:at a rate|too quickly|too fast)",
        r"(?:sending|sent) (?:mail |messages )?(?:too fast|at a rate)",
        r"too many (?:messages|e-?mails|mails|recipients) (?:this|per|in the last|in a short)",
        r"(?:messages|e-?mails) per (?:hour|minute|day) (?:limit|exceeded)",
        r"exceeded the (?:max(?:imum)? )?(?:number of )?(?:e-?mails|messages) per",
        r"(?<!connection )rate limit(?:ed|ing)? (?:exceeded|reached)",
        r"(?<!connection )\brate limited\b",
        r"throttl(?:ed|ing)",
    ),
    "notaccept": _rx(
        r"null ?mx",
        r"no mx record",
        r"couldn'?t find a mail exchanger",
        r"(?:host|domain|host/domain) does not accept (?:any )?mail",
        r"does not accept mail",
        r"mx or srv record indicated no smtp service",
        r"doesn'?t receive e-?mail",
        r"mail receiving disabled",
    ),
    "userunknown": _rx(
        r"\buser(?:name)? (?:is )?"
        r"(?:unknown|not found|not known|not exist|does ?n[o']t exist|not listed)",
        r"unknown (?:user|recipient|mailbox|local[- ]?part|e-?mail address|alias)",
        r"unknown or illegal (?:user|alias)",
        r"no such (?:user|recipient|mailbox|address|person|account|local user)",
        r"(?:recipient|address|mailbox|account|e-?mail address|user id|alias)"
        r" (?:does not|doesn'?t|did not) exist",
        r"(?:mailbox|recipient|e-?mail address|address) (?:not found|is unavailable|unavailable"
        r"|invalid|not present|not valid|is not valid|could not be found|couldn'?t be found)",
        r"invalid (?:recipient|mailbox|address|user|final delivery userid)",
        r"not a (?:valid|known) (?:recipient|user|mailbox|address)",
        r"is not a (?:known|valid) user",
        r"no mailbox (?:here|by that name|found|available)",
        r"no (?:valid )?recipients? (?:for|found|here)",
        r"no valid recipients",
        r"resolver\.adr\.\w*recip\w*notfound",
        r"recipient not found",
        r"(?:e-?mail address|recipient|user|mailbox) (?:was|were|is) not found",
        r"not listed in (?:the )?(?:domino directory|public name & address book|address book)",
        r"recipient name is not recognized",
        r"this user doesn'?t have an? \S+ account",
        r"adresse d au moins un destinataire invalide",
        r"(?:utilisateur|destinataire) inconnu",
        r"requested action not taken: mailbox unavailable",
        r"(?<!sender )address (?:rejected|unknown)(?: \(|\.|$)",
        r"recipient address rejected: "
        r"(?:user unknown|unknown user|invalid user|user .{1,80} does not exist)",
        r"sorry, (?:user unknown|no mailbox)",
        r"(?:user|recipient) (?:unknown|not found) in ",
        r"bad destination (?:mailbox|address)",
        r"addressee unknown",
        r"unknown (?:e-?mail )?address\b",
        r"invalid e-?mail address",
        r"no such e-?mail",
        r"unknown local user|local user .{0,40}(?:unknown|not known)",
        r"(?:empf(?:ae|ä)nger|benutzer|adresse) (?:ist )?unbekannt",
        r"unbekannte[rn]? (?:empf(?:ae|ä)nger|benutzer)",
        r"usuario (?:desconocido|inexistente|no existe)",
        r"(?:utente|destinatario|indirizzo) (?:sconosciuto|inesistente)",
    ),
    # Said by the recipient's own directory, not echoed from an SMTP dialogue: proof enough
    # whatever command was running.
    "userunknown_definitive": _rx(
        r"resolver\.adr\.\w*recip\w*notfound",
        r"not listed in (?:the )?(?:domino directory|public name & address book|address book)",
        r"recipient name is not recognized",
        r"e-?mail account that you tried to reach does not exist",
        r"address couldn'?t be found",
        r"this user doesn'?t have an? \S+ account",
        r"invalid final delivery userid",
        r"recipient address rejected: access denied",
        # Sendmail's local delivery agent, on the final host, looking the user up itself.
        r"mail\.local: unknown (?:user|name)",
    ),
    "filtered": _rx(
        r"message filtered",
        r"refused due to recipient preferences",
        r"(?:user|recipient) refuses? to receive",
        r"you have been blocked by the recipient",
        r"rejected due to user rules",
        r"only accepting mail from specific",
        r"not accepting any mail",
        r"has restricted sms e-?mail",
    ),
    "requireptr": _rx(
        r"reverse dns",
        r"\bptr\b",
        r"\brdns\b",
        r"reverse (?:lookup|name|hostname)",
        r"cannot (?:find|resolve) your (?:hostname|host name|address)",
        r"mismatches client ip",
        r"unverif(?:y|i)able sending ips?",
        r"ip name lookup failed",
        r"generic dns",
    ),
    "notcompliantrfc": _rx(
        r"multiple (?:\d\.\d\.\d )?addresses in from",
        r"(?:not|non)[- ]?(?:rfc|rfc ?\d+)[- ]?complian",
        r"violat\w* (?:of )?rfc ?\d+",
        r"\brfc ?5322\b",
        r"(?:missing|invalid|malformed|duplicate) (?:message-id|date|from|subject) header",
        r"header (?:has|contains) (?:invalid|illegal|non)",
    ),
    "policyviolation": _rx(
        r"polic(?:y|ies) (?:violation|reasons|rejection)",
        r"(?:rejected|not accepted|denied|refused|blocked) (?:for|due to|by) "
        r"(?:local |organization(?:al)? |security )?polic",
        r"local policy",
        r"header error",
        r"protocol violation",
        r"content presents a potential",
        r"organization(?:al)? (?:policy|settings)",
        r"by non-member to a members-only list",
        r"closed mailing list",
        r"illegal attachment",
        r"host network not allowed",
        r"policy that prohibit",
        r"message given low priority",
    ),
    "contenterror": _rx(
        r"(?:header|mime|content|message) (?:is )?(?:malformed|corrupt|invalid|illegal)",
        r"(?:malformed|invalid|illegal) (?:header|mime|content)",
        r"improper use of 8-?bit",
        r"bare (?:lf|cr)",
        r"line (?:is )?too long",
    ),
    "rejected": _rx(
        r"sender (?:e-?mail )?(?:address )?"
        r"(?:rejected|refused|denied|invalid|verify failed|not allowed)",
        r"sender (?:is )?(?:in my black ?list|spammer|blacklisted|not pre-approved)",
        r"(?:invalid|bad|bogus|unroutable|unknown) sender",
        r"domain of sender address",
        r"sender domain (?:is empty|must exist|does not exist|not found)",
        r"mail from \S+ (?:rejected|refused)",
        r"from: domain is invalid",
        r"provide a valid from",
        r"purported responsible address",
        r"address that has been blacklisted",
        r"(?:email|sender) address (?:has been|is) blacklisted",
        r"empty envelope senders?",
        r"null sender is not allowed",
        r"returned mail not accepted here",
        r"not allowed to post to this (?:mailing list|group)",
        r"(?:don'?t|do not) have permission to post",
        r"not subscribed to this group",
        r"you are not (?:a )?member",
        r"administrative prohibition",
        r"batv",
        r"google groups|groups\.google\.com",
        r"sending this from a different address or alias",
        r"e2110",
    ),
    "hostunknown": _rx(
        r"host (?:or domain name )?(?:not found|unknown)",
        r"unknown host",
        r"domain (?:name )?(?:does not exist|not found|is not reachable|must exist|unknown)",
        r"no such domain",
        r"unrout(?:e)?able (?:address|domain)",
        r"(?:account|address) or domain may not exist",
        r"couldn'?t find any host named",
        r"mail domain .{1,80} is unknown",
        r"(?:^|[^\d])553 .{1,80} does not exist",
        r"illegal host/domain name",
        r"mx records? point to non-?existent hosts?",
        r"dns domain .{1,80} does not exist",
        r"non-?existent domain",
        r"no such host\b",
        r"unknown (?:mail )?domain\b",
    ),
    "spamdetected": _rx(
        r"\bspam\b.{0,30}(?:detected|rejected|blocked|refused|content|classification|score|filter"
        r"|message|not accepted|check)",
        r"(?:detected|classified|identified|marked|scored|considered|rejected) as "
        r"(?:probable )?spam",
        r"(?:looks|appears|seems) (?:like|to be) (?:spam|unsolicited)",
        r"(?:message|mail) content rejected",
        r"\bube\b",
        r"(?<!rate of )unsolicited (?:bulk )?(?:e-?mail|mail|message)",
        r"spam-like",
        r" - spam\b",
        r"spam (?:probability|points)",
        r"probable spam",
        r"(?:suspicion|suspected) (?:of )?spam",
        r"(?:rejected|refused|denied)\b.{0,40}\b(?:as|of|because|due to|for)\b.{0,20}\bspam\b",
        r"bulk (?:e-?mail|mail)",
        r"mail rejete\. mail rejected\. ofr_?506",
        r"content filter rejection",
    ),
    "toomanyconn": _rx(
        r"too many (?:connections|concurrent|sessions|smtp sessions|errors from your ip|hops? )",
        r"too many recipients(?! (?:this|per|in the last))",
        r"connection (?:rate )?limit",
        r"per-domain connection limit",
        r"maximum (?:number of )?connections",
        r"trop de connexions",
        r"frequency limit",
    ),
    "blocked": _rx(
        r"blocked using",
        r"black ?listed (?:by|at|on|in)",
        r"block ?list(?:ed)?",
        r"on (?:our|a|the) (?:block|black) ?list",
        r"(?:listed|blocked) (?:in|on|at|by) (?:\S+ )?"
        r"(?:rbl|dnsbl|spamhaus|spamcop|barracuda|sorbs)",
        r"\b(?:dnsbl|rbl)\b",
        r"spamhaus",
        r"spamcop",
        r"banned sending ip",
        r"client host (?:\S+ )?rejected",
        r"(?:ip|ip address|your address|host)\b.{0,40}\b(?:is |has been |was )?"
        r"(?:blocked|black ?listed|banned|listed)",
        r"(?:blocked|banned|rejected) (?:ip|host)",
        r"blocked for abuse",
        r":blocked\)",
        r"unsolicited mail originating from your ip",
        r"invalid helo|helo (?:name )?(?:rejected|invalid|not allowed)",
        r"please use the smtp server of your isp",
        r"not allowed to connect",
        r"go away",
        r"helo command rejected",
        r"dynamic ip",
        r"open relay",
        r"no access from mail server",
        r"connection refused",
        r"connection reset by peer",
        r"connection (?:was )?dropped",
        r"service refused",
        r"(?:traffic|mail|connections?) not accepted from (?:this|your) ip",
        r"not currently accepting mail from your ip",
        r"you are not allowed to",
        r"your (?:server|network|host) (?:is|has been)",
    ),
    # Phase two: causes that never outrank a specific status code.
    "virusdetected": _rx(
        r"\bvirus\b", r"malware", r"\binfected\b", r"trojan", r"executable (?:file|attachment)"
    ),
    "systemerror": _rx(
        r"system (?:config(?:uration)? )?error",
        r"internal (?:system |server )?error",
        r"local (?:configuration )?error",
        r"temporary local problem",
        r"loops? back to myself",
        r"it would create a mail loop",
        r"service (?:currently )?unavailable",
        r"transaction failed",
        r"(?:server|mail system) (?:is )?misconfigured",
        r"server configuration",
        r"\bldap\b",
        r"duplicated message-id",
        r"directory server",
        r"queue file write error",
        r"interrupted system call",
    ),
    "networkerror": _rx(
        r"hop count exceeded",
        r"routing loop",
        r"(?:mail|forwarding) loop",
        r"too many hops",
        r"message looping",
        r"host name lookup failure",
        r"malformed (?:or unexpected )?name server reply",
        r"no route to host",
        r"host is unreachable",
        r"host not found, try again",
        r"dns (?:error|failure|lookup failed|problem)",
        r"nxdomain",
        r"had no relevant answers",
        r"unable to resolve",
        r"(?:wasn'?t|was not|unable|not) able to (?:establish|open) (?:an? )?(?:smtp )?connection",
        r"could not connect",
        r"network (?:is )?unreachable",
        r"host lookup did not complete",
        r"lost connection with",
        r"network error",
        r"lookup failed temporarily",
        r"temporary (?:dns|name ?server|lookup|name resolution) (?:failure|error)",
        r"name ?server (?:timeout|failure)",
        r"servfail",
    ),
    "systemfull": _rx(
        r"insufficient (?:disk |system )?(?:space|storage)",
        r"(?:mail )?system (?:storage |disk )?(?:is )?full",
        r"(?:disk|storage) (?:is )?full",
    ),
    "expired": _rx(
        r"(?:delivery|message|envelope) (?:time )?(?:has )?expired",
        r"expired after",
        r"(?:in the )?queue too long",
        r"has been delayed",
        r"could not be delivered for (?:more than )?\d+ ?(?:hours|days)",
        r"not delivered within",
        r"retry time not reached",
        r"giving up",
        r"after (?:multiple|several|many) (?:retries|attempts)",
        r"\btimed out\b",
        r"did not accept our requests to connect",
        r"(?:host|server) (?:is )?not (?:reachable|responding)",
        r"server did not respond",
        r"failing for a long time",
        r"delivery attempts will continue",
        r"unable to deliver in \d+",
        r"retry timeout exceeded",
        r"cannot send message (?:for|within) \d+",
        r"queue (?:life)?time (?:exceeded|expired)",
        r"maximum (?:queue |delivery )?(?:time|lifetime) (?:exceeded|reached)",
        r"has not been delivered (?:for|within|after) \d+",
    ),
    "failedstarttls": _rx(
        r"starttls",
        r"(?:does not|doesn'?t) support (?:tls|ssl|encryption)",
        r"tls (?:is )?required",
        r"requiretls",
        r"tls (?:negotiation|handshake) failed",
    ),
    "securityerror": _rx(
        r"smtp authentication",
        r"authentication (?:is )?(?:required|failure|failed|credentials)",
        r"unauthenticated senders? not allowed",
        r"not authorized to send",
        r"insecure mail relay",
        r"you don'?t authenticate",
        r"verification failure",
    ),
    "mailererror": _rx(
        r"procmail",
        r"maildrop",
        r"pipe to \|",
        r"mailer (?:error|program)",
        r"(?:command|program) (?:died|failed|output|exited)",
        r"exit (?:code|status)",
        r"x-unix;",
    ),
}

# The order in which phase-one reasons are tried: earlier ones are the more specific explanations.
_SPECIFIC_ORDER: Final[tuple[str, ...]] = (
    "mailboxfull",
    "exceedlimit",
    "mesgtoobig",
    "suspend",
    "hasmoved",
    "norelaying",
    "authfailure",
    "badreputation",
    "speeding",
    "notaccept",
)
# Of those, the ones a status code alone may establish ahead of the text of later reasons.
_STATUS_BACKED: Final[frozenset[str]] = frozenset(
    {"mailboxfull", "exceedlimit", "mesgtoobig", "suspend", "hasmoved", "authfailure"}
)
_TEXT_ONLY_ORDER: Final[tuple[str, ...]] = (
    "virusdetected",
    "policyviolation",
    "systemerror",
    "networkerror",
    "systemfull",
    "failedstarttls",
    "securityerror",
    "expired",
    "mailererror",
)
_BEFORE_DATA: Final[frozenset[str]] = frozenset({"CONN", "EHLO", "MAIL", "RCPT", "STARTTLS"})
# RFC 3463 X.7.x, "security or policy status".
_POLICY_CODE: Final = re.compile(r"[45]\.7\.")
# Continuation prefixes of multi-line SMTP replies ("550-5.1.1 ") split phrases apart.
_CONTINUATION_RE: Final = re.compile(
    r"(?<=\s)[245]\d\d-(?:[245]\.\d\.\d+ +)?|(?<=[a-z,;] )[245]\d\d [245]\.\d\.\d+ "
)
_SPACE_RE: Final = re.compile(r"\s+")
# Starts only where a word starts: from every position inside a long word it went quadratic.
_ADDRESS_ONLY_RE: Final = re.compile(r"(?<!\S)\S+@\S+")


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace and drop multi-line reply prefixes so phrases match."""
    flat = _SPACE_RE.sub(" ", text.lower())
    return _CONTINUATION_RE.sub("", flat).strip()


def matches(reason: str, text: str) -> bool:
    """Whether normalized `text` contains one of `reason`'s phrases."""
    pattern = PATTERNS.get(reason)
    return bool(pattern and pattern.search(text))


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything the classifier may look at for one recipient."""

    text: str
    status: str = ""
    reply_code: str = ""
    command: str = ""
    action: str = ""
    diagnostic_type: str = ""
    #: The report itself says the failure is permanent: a 5xx reply or 5.x.x status it quotes or
    #: carries in its Status: field, or its own words ("this is a permanent error"), with no
    #: transient code beside it. A status merely defaulted from the action does not count.
    permanent: bool = False
    #: A code (Status: field, quoted status or reply) states the class; false when the class
    #: comes from the action alone, as in bounces that quote no SMTP dialogue.
    coded: bool = True


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reason and what it rests on: "text", "status", "type" (the diagnostic type) or
    "fallback" (nothing specific; callers may retry with more surrounding text)."""

    reason: str
    basis: str


def classify(ev: Evidence) -> Verdict:
    """Decide the bounce reason for one recipient (see the module docstring for precedence)."""
    text = normalize_text(ev.text)
    by_status = status_reason(ev.status)
    if by_status == "delivered" or ev.action in ("delivered", "relayed", "expanded"):
        return Verdict("delivered", "status")
    local_mailer = ev.diagnostic_type.lower().startswith("x-unix")
    if local_mailer:
        # A local delivery agent (procmail, a pipe) failed: its exit codes map onto status codes
        # loosely, so only stated causes and the mailer itself count.
        for reason in ("mailboxfull", *_TEXT_ONLY_ORDER):
            if reason != "expired" and matches(reason, text):
                return Verdict(reason, "text")
        if by_status and by_status not in ("userunknown", "hostunknown"):
            return Verdict(by_status, "status")
        return Verdict("mailererror", "type")

    verdict = _phase_one(text, ev, by_status)
    if verdict:
        return verdict
    for reason in _TEXT_ONLY_ORDER:
        if matches(reason, text):
            return Verdict(reason, "text")
    return _fallback(text, ev, by_status)


def _phase_one(text: str, ev: Evidence, by_status: str) -> Verdict | None:
    command, reply = ev.command, ev.reply_code
    for reason in _SPECIFIC_ORDER:
        if reason == "norelaying":
            if command not in ("CONN", "EHLO") and matches(reason, text):
                return Verdict(reason, "text")
            continue
        if reason == "suspend" and reply == "525":
            return Verdict(reason, "status")
        if reason == "notaccept" and reply in ("521", "556"):
            return Verdict(reason, "status")
        if by_status == reason and reason in _STATUS_BACKED:
            return Verdict(reason, "status")
        if matches(reason, text):
            return Verdict(reason, "text")

    if by_status == "rejected":
        # X.1.7/X.1.8: the sender's address was refused, whatever else the text says.
        return Verdict("rejected", "status")
    user_text = matches("userunknown", text)
    if command != "MAIL" and matches("userunknown_definitive", text):
        return Verdict("userunknown", "text")
    if by_status == "userunknown" and command != "MAIL":
        others = ("blocked", "rejected", "spamdetected", "policyviolation", "filtered")
        if not any(matches(other, text) for other in others):
            return Verdict("userunknown", "status")
    elif user_text and not _POLICY_CODE.match(ev.status):
        if command == "RCPT":
            return Verdict("userunknown", "text")
        if not command and not reply:
            # No SMTP exchange quoted: the reporting system looked the user up itself.
            return Verdict("userunknown", "text")

    filtered_text = matches("filtered", text)
    if by_status == "filtered" and (user_text or filtered_text):
        return Verdict("filtered", "status")
    if command not in _BEFORE_DATA and (filtered_text or user_text):
        return Verdict("filtered", "text")
    if user_text and command == "RCPT":
        # "User unknown" under a policy code (5.7.1 "Recipient address rejected: User unknown"):
        # a filter's refusal worded as a missing user (ADR 0055).
        return Verdict("filtered", "text")

    if by_status == "spamdetected" or (
        command not in _BEFORE_DATA and matches("spamdetected", text)
    ):
        return Verdict("spamdetected", "text")
    for reason in ("requireptr", "notcompliantrfc", "policyviolation"):
        if by_status == reason or matches(reason, text):
            return Verdict(reason, "text")
    if matches("contenterror", text):
        return Verdict("contenterror", "text")

    if matches("rejected", text) and (
        command == "MAIL"
        or (command == "DATA" and by_status != "userunknown")
        or by_status in ("", "securityerror", "systemerror")
        # X.1.0 is "other address status": the sender's address as much as the recipient's.
        or ev.status.endswith(".1.0")
    ):
        return Verdict("rejected", "text")

    if by_status == "hostunknown":
        if not matches("networkerror", text) or ev.action == "failed":
            # A DNS fault the reporting MTA gave up on for good (5.4.4, 5.1.2 in a failure
            # report) leaves the domain unroutable; `is_confident` still withholds acting on
            # it while the words name a passing network fault (ADR 0055).
            return Verdict("hostunknown", "status")
    elif matches("hostunknown", text):
        # A transient "no such host" is a DNS problem, not proof that the domain is gone.
        transient = ev.status.startswith("4") or reply.startswith("4")
        return Verdict("networkerror" if transient else "hostunknown", "text")

    for reason in ("toomanyconn", "blocked"):
        if by_status == reason or matches(reason, text):
            return Verdict(reason, "text")
    return None


# Reasons that say something other than "the address is dead"; finding one of them in the words
# of a rejection classified as a dead address means the rejection is not unambiguous.
_CONTRARY_TO_DEAD: Final[tuple[str, ...]] = (
    "mailboxfull",
    "suspend",
    "norelaying",
    "authfailure",
    "badreputation",
    "speeding",
    "filtered",
    "spamdetected",
    "policyviolation",
    "rejected",
    "toomanyconn",
    "blocked",
    "virusdetected",
    "networkerror",
    "systemerror",
)
# A passing condition. ("Check the address and try again" is advice to the sender, not one.)
_TRANSIENT_WORDS_RE: Final = re.compile(
    r"(?:try|retry) (?:again )?later|temporar|deferred|will (?:be )?retr|try again in"
)
# Codes that state a refused domain (RFC 7505 null MX, RFC 7504 "does not accept mail").
_NOTACCEPT_CODES: Final = frozenset({"5.1.10", "5.7.27"})
_NOTACCEPT_REPLIES: Final = frozenset({"521", "556"})
_DEAD_REASONS: Final = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})
# Enhanced codes that agree with a dead-address reason beyond the one `status_reason` gives:
# the address-status family (X.1.x; Exchange answers an unknown recipient with 5.1.10), the
# routing codes a missing domain produces, and the "other" codes of the network, mail-system and
# protocol subjects, which say nothing either way. Mailbox (X.2.x), content (X.6.x) and policy
# (X.7.x) codes do contradict: the mailbox exists, or the message was the problem.
_AGREEING_CODES: Final[dict[str, re.Pattern[str]]] = {
    "userunknown": re.compile(r"5\.1\.(?:0|1|3|10)$|5\.[345]\.0$"),
    "hostunknown": re.compile(r"5\.1\.2$|5\.4\.[04]$|5\.[35]\.0$"),
    "hasmoved": re.compile(r"5\.1\.6$|5\.[345]\.0$"),
    "notaccept": re.compile(r"5\.1\.10$|5\.7\.27$|5\.4\.[04]$|5\.[35]\.0$"),
    # Soft reasons: X.2.1 is "mailbox disabled"; X.7.x is the catch-all of policy refusals.
    "suspend": re.compile(r"[45]\.2\.1$"),
    **{
        reason: re.compile(r"[45]\.7\.\d+$")
        for reason in (
            "authfailure",
            "badreputation",
            "blocked",
            "failedstarttls",
            "norelaying",
            "policyviolation",
            "rejected",
            "requireptr",
            "spamdetected",
            "speeding",
            "toomanyconn",
            "virusdetected",
        )
    },
}
# Codes that contradict even the recipient directory's own "no such user": the mailbox exists
# (X.2.x), the content (X.6.x) or a policy (X.7.x) was the problem.
_CONTRARY_TO_DIRECTORY: Final = re.compile(r"[45]\.[267]\.")


def is_confident(reason: str, ev: Evidence) -> bool:
    """Whether a reason rests on evidence that agrees with itself, so that acting on it (above
    all, suppressing a "dead" address for good) is safe.

    Confident means: the words say this reason and no code contradicts them (a code for another
    reason does; a generic X.0.0, an agreeing code of `_AGREEING_CODES` or no enhanced code does
    not). A dead address needs more (ADR 0023): the failure is stated as permanent (by a code,
    in words, or as the reporting system's own directory or DNS finding in a report quoting no
    code), the rejection did not answer MAIL, nor DATA unless an address code says so (content
    filters say "no such user" too), nothing suggests a passing condition ("try again later")
    and the words name no other cause as well.
    """
    text = normalize_text(ev.text)
    definitive = reason == "userunknown" and matches("userunknown_definitive", text)
    said = matches(reason, text) or definitive
    if reason == "filtered":
        # A filter's refusal is usually worded as "no such user" (see `classify`).
        said = said or matches("userunknown", text)
    by_status = status_reason(ev.status)
    agreeing = _AGREEING_CODES.get(reason)
    code_specific = by_status == reason or bool(agreeing and agreeing.match(ev.status))
    code_agrees = code_specific or by_status == "" or is_generic(ev.status)
    if definitive and not _CONTRARY_TO_DIRECTORY.match(ev.status):
        # Exchange Online answers "Recipient address rejected: Access denied" with 5.4.1.
        code_agrees = True
    if reason == "notaccept" and (
        ev.status in _NOTACCEPT_CODES or ev.reply_code in _NOTACCEPT_REPLIES
    ):
        # The code alone is specific: it exists for nothing else.
        said = code_agrees = True
    if not (said and code_agrees):
        return False
    if reason not in _DEAD_REASONS:
        return True
    # A report that quotes no code at all is the reporting system's own finding: its directory
    # says the user does not exist, or its DNS lookup that the domain does not. A failure report
    # stating that is final; a bare "user unknown" with nothing behind it is not (content
    # filters and forwarders say it too).
    own_finding = (
        not ev.coded
        and ev.action == "failed"
        and (definitive or reason in ("hostunknown", "notaccept"))
    )
    if not (ev.permanent or own_finding) or ev.action == "delayed" or ev.command == "MAIL":
        return False
    if ev.coded and is_generic(ev.status) and not ev.reply_code:
        # A delivery report whose Status: field could have named the address problem (5.1.1)
        # and says only 5.0.0, quoting no reply of the remote server: the words stand alone,
        # one witness (ADR 0055). Reports with no code at all are the `own_finding` above.
        return False
    if ev.command == "DATA" and not (code_specific and by_status == reason):
        # After DATA only an address code (5.1.1 "bad mailbox") outweighs the suspicion of a
        # content filter; transcripts also go on to DATA after the RCPT that failed.
        return False
    if _TRANSIENT_WORDS_RE.search(text):
        return False
    return not any(matches(other, text) for other in _CONTRARY_TO_DEAD)


def _fallback(text: str, ev: Evidence, by_status: str) -> Verdict:
    if ev.command == "MAIL":
        # Refused before any recipient was named: the sender, not the address, was the problem.
        return Verdict("rejected", "fallback")
    if ev.command in ("CONN", "EHLO"):
        return Verdict("blocked", "fallback")
    if by_status:
        return Verdict(by_status, "status")
    if ev.status[:3] in ("5.6", "4.6"):
        return Verdict("contenterror", "status")
    if ev.status[:3] in ("5.7", "4.7"):
        return Verdict("securityerror", "status")
    if ev.reply_code and ev.reply_code[1] == "0" and ev.reply_code[2] in "1234567":
        # 501-507 / 401-407: the remote server could not parse what we sent.
        return Verdict("syntaxerror", "fallback")
    if ev.action in ("delayed", "expired"):
        return Verdict("expired", "fallback")
    if _ADDRESS_ONLY_RE.sub("", text).strip(" .,:;<>[]()*-\"'"):
        # Something was said, just nothing we recognise: wait for more evidence.
        return Verdict("onhold", "fallback")
    return Verdict("undefined", "fallback")
