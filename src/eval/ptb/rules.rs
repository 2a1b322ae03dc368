//! The rule table of Stanford CoreNLP 3.4.1's `PTBLexer` (the version
//! pycocoevalcap ships), re-expressed with [`super::regex`] builders.
//!
//! Rules are listed in the lexer's order: the longest match wins and ties go
//! to the earlier rule. A rule may have trailing context (`main/trail` in
//! JFlex): the trailing part counts for the longest-match comparison but is
//! not consumed. Only the options in force for
//! `PTBTokenizer -preserveLines -lowerCase` are modelled: default PTB3
//! normalisations on, `tokenizeNLs` on, `escapeForwardSlashAsterisk`,
//! `strictTreebank3`, `americanize` and `invertible` off, untokenizable
//! characters deleted.

use super::regex::{alt, any, digit, letter, letter_digit, lit, nset, seq, set, upper, words, Re};

/// What the lexer does with a matched token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Emit the text as is.
    Keep,
    /// Emit all but the last `n` units, rescan those (assimilations such as
    /// `cannot` → `can` + `not`).
    Pushback(usize),
    /// Replace spaces with U+00A0 (SGML tags, fractions).
    Nbsp,
    /// Emit `--` (dash characters and entities).
    Dash,
    /// Replace `&amp;` (any case) with `&`.
    Amp,
    /// Remove soft hyphens (U+00AD); an emptied token becomes `-`.
    SoftHyphens,
    /// LaTeX-style quote normalisation; `true` when probably an opening quote.
    Quotes(bool),
    /// Vulgar fraction characters to `1/2` and friends.
    Fraction,
    /// Currency symbols to `cents`, `#`, `$`.
    Currency,
    /// Acronym before a sentence-initial word: `I.` → `I` + `.`, otherwise
    /// `U.S.` → `U.S.` + `.` (the period is emitted twice).
    Acronym,
    /// Sentence-final `ABBREV1`: emit the text with its period and rescan the
    /// period too.
    Reduplicate,
    /// Phone numbers: spaces to U+00A0, parentheses to `-LRB-`/`-RRB-`.
    Phone,
    /// Parentheses to `-LRB-`/`-RRB-` (smileys).
    Parens,
    /// Emit a constant.
    Const(&'static str),
    /// Runs of 3–4 hyphens become `--`.
    Hyphens,
    /// Emit `...`.
    Ellipsis,
    /// Whitespace and ignorable characters: no token.
    Skip,
    /// A line break (`tokenizeNLs`): ends the output line.
    Newline,
    /// A character no rule knows: deleted (the `firstDelete` default).
    Untokenizable,
}

/// One lexer rule.
pub(crate) struct Rule {
    /// The token part.
    pub(crate) main: Re,
    /// Optional trailing context.
    pub(crate) trail: Option<Re>,
    /// What to emit.
    pub(crate) action: Action,
}

fn rule(main: Re, action: Action) -> Rule {
    Rule { main, trail: None, action }
}

fn rule_ctx(main: Re, trail: Re, action: Action) -> Rule {
    Rule { main, trail: Some(trail), action }
}

/// Characters the lexer adds to `[:letter:]` (combining marks and others).
const EXTRA_LETTERS: &str = "\u{AD}\u{237}-\u{24F}\u{2C2}-\u{2C5}\u{2D2}-\u{2DF}\u{2E5}-\u{2FF}\
\u{300}-\u{36F}\u{370}-\u{37D}\u{384}\u{385}\u{3CF}\u{3F6}\u{3FC}-\u{3FF}\u{483}-\u{487}\u{4CF}\
\u{4F6}-\u{4FF}\u{510}-\u{525}\u{55A}-\u{55F}\u{591}-\u{5BD}\u{5BF}\u{5C1}\u{5C2}\u{5C4}\u{5C5}\
\u{5C7}\u{615}-\u{61A}\u{63B}-\u{63F}\u{64B}-\u{65E}\u{670}\u{6D6}-\u{6EF}\u{6FA}-\u{6FF}\u{70F}\
\u{711}\u{730}-\u{74F}\u{750}-\u{77F}\u{7A6}-\u{7B1}\u{7CA}-\u{7F5}\u{7FA}\u{900}-\u{903}\u{93C}\
\u{93E}-\u{94E}\u{951}-\u{955}\u{962}-\u{963}\u{981}-\u{983}\u{9BC}-\u{9C4}\u{9C7}\u{9C8}\
\u{9CB}-\u{9CD}\u{9D7}\u{9E2}\u{9E3}\u{A01}-\u{A03}\u{A3C}\u{A3E}-\u{A4F}\u{A81}-\u{A83}\
\u{ABC}-\u{ACF}\u{B82}\u{BBE}-\u{BC2}\u{BC6}-\u{BC8}\u{BCA}-\u{BCD}\u{C01}-\u{C03}\u{C3E}-\u{C56}\
\u{D3E}-\u{D44}\u{D46}-\u{D48}\u{E30}-\u{E3A}\u{E47}-\u{E4E}\u{EB1}-\u{EBC}\u{EC8}-\u{ECD}";

fn space() -> Re {
    set(" \t\u{A0}\u{2000}-\u{200A}\u{3000}")
}

fn newline() -> Re {
    alt!["\r", seq![lit("\r").opt(), "\n"], set("\u{2028}\u{2029}\u{B}\u{C}\u{85}")]
}

fn spacenl() -> Re {
    Re::Alt(vec![space(), newline()])
}

fn sgml() -> Re {
    let name = || seq![set("A-Za-z"), set("A-Za-z0-9_:.\\-").star()];
    let quoted = alt![seq!["'", nset("'").star(), "'"], seq!["\"", nset("\"").star(), "\""]];
    let attr = alt![name(), seq![name(), set(" ").star(), "=", set(" ").star(), quoted]];
    let declaration = seq![set("!?"), set("A-Za-z\\-"), nset(">\r\n").star()];
    let open = seq![name(), seq![set(" ").plus(), attr].star(), set(" ").star(), lit("/").opt()];
    let close = seq!["/", name()];
    seq!["<", alt![declaration, open, close], set(" ").star(), ">"]
}

fn splet() -> Re {
    seq!["&", set("aeiouAEIOU"), words(&["acute", "grave", "uml"]), ";"]
}

/// `{LETTER}`: `[:letter:]`, letter entities and the extra characters.
fn letter_x() -> Re {
    Re::Alt(vec![super::regex::letter_or(EXTRA_LETTERS), splet()])
}

/// `({LETTER}|{DIGIT})`.
fn letter_x_digit() -> Re {
    Re::Alt(vec![super::regex::letter_or(EXTRA_LETTERS), digit(), splet()])
}

fn word() -> Re {
    seq![letter_x(), letter_x_digit().star(), seq![set(".!?"), letter_x(), letter_x_digit().star()].star()]
}

fn apos() -> Re {
    alt![set("'\u{92}\u{2019}"), "&apos;"]
}

fn apos_etc() -> Re {
    alt![apos(), set("`\u{91}\u{2018}\u{201B}")]
}

fn hyphen() -> Re {
    set("\\-_\u{58A}\u{2010}\u{2011}")
}

fn redaux() -> Re {
    seq![apos(), alt![set("msdMSD"), "re", "ve", "ll"]]
}

fn sredaux() -> Re {
    seq!["n", apos_etc(), "t"]
}

fn acro_special() -> Re {
    alt![
        seq![words(&["Canada", "Sino", "Korean", "EU", "Japan", "non"]), "-U.S"],
        seq!["U.S.-", alt!["U.K", "U.S.S.R"]]
    ]
}

fn acro() -> Re {
    alt![seq![set("A-Za-z"), seq![".", set("A-Za-z")].star()], acro_special()]
}

fn acro2() -> Re {
    alt![seq![set("A-Za-z"), seq![".", set("A-Za-z")].plus()], acro_special()]
}

/// A caseless word whose first letter must be the given upper-case letter.
fn cap(first: &str, rest: &str) -> Re {
    if rest.is_empty() {
        set(first)
    } else {
        seq![set(first), rest]
    }
}

fn abbrev1() -> Re {
    let month = words(&["Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"]);
    let days = words(&["Mon", "Tue", "Tues", "Wed", "Thu", "Thurs", "Fri"]);
    let state = alt![
        "Ala",
        "Ariz",
        cap("A", "z"),
        cap("A", "rk"),
        "Calif",
        "Colo",
        "Conn",
        "Ct",
        "Dak",
        cap("D", "el"),
        "Fla",
        "Ga",
        cap("I", "ll"),
        "Ind",
        seq!["Kan", lit("s").opt()],
        "Ky",
        cap("L", "a"),
        cap("M", "ass"),
        "Md",
        "Mich",
        "Minn",
        cap("M", "iss"),
        "Mo",
        "Mont",
        "Neb",
        "Nev",
        "Okla",
        cap("O", "re"),
        cap("P", "a"),
        "Penn",
        "Tenn",
        cap("T", "ex"),
        "Va",
        "Vt",
        cap("W", "ash"),
        seq!["Wis", lit("c").opt()],
        "Wyo"
    ];
    let comp = alt![
        "Inc",
        seq!["Co", lit("s").opt()],
        "Corp",
        seq!["P", lit("p").opt(), "t", set("ye"), lit("s").opt()],
        "Ltd",
        "Plc",
        "Rt",
        "Bancorp",
        "Bhd",
        "Assn",
        "Univ",
        "Intl",
        "Sys"
    ];
    let num = words(&["tel", "est", "ext", "sq"]);
    let ptit = alt!["Jr", "Sr", "Bros", seq![alt!["Ed", "Ph"], ".D"], "Blvd", "Rd", "Esq"];
    seq![alt![month, days, state, comp, num, ptit, "etc", "al", "seq", "Bldg"], "."]
}

fn abbrev4() -> Re {
    let s = || lit("s").opt();
    let title = alt![
        "Mr",
        "Mrs",
        "Ms",
        cap("M", "iss"),
        seq!["Dr", s()],
        seq!["Prof", s()],
        seq!["Sen", s()],
        seq!["Rep", s()],
        seq!["Atty", s()],
        "Lt",
        "Col",
        "Gen",
        "Messrs",
        seq!["Gov", s()],
        "Adm",
        "Rev",
        "Maj",
        "Sgt",
        "Cpl",
        "Pvt",
        "Capt",
        seq!["St", lit("e").opt()],
        "Ave",
        "Pres",
        "Lieut",
        "Hon",
        "Brig",
        seq!["C", lit("o").opt(), "mdr"],
        "Pfc",
        "Spc",
        seq!["Supt", s()],
        "Det",
        "Mt",
        "Ft",
        "Adj",
        "Adv",
        "Asst",
        "Assoc",
        "Ens",
        "Insp",
        "Mlle",
        "Mme",
        "Msgr",
        "Sfc"
    ];
    let comp2 = alt!["Invt", "Elec", "Natl", seq!["M", set("ft"), "g"], "Dept"];
    alt![title, "vs", "Alex", "Wm", "Jos", "Cie", "a.k.a", "cf", "TREAS", "Ph", acro(), comp2]
}

fn abbrev3() -> Re {
    seq![alt!["ca", seq!["fig", lit("s").opt()], "prop", seq!["no", lit("s").opt()], "art", "bldg", "pp", "op"], "."]
}

/// Words after which an acronym's period is taken to end the sentence.
fn sentence_starters() -> Re {
    let list: &[(&str, &str)] = &[
        ("A", "bout"),
        ("A", "ccording"),
        ("A", "dditionally"),
        ("A", "fter"),
        ("A", "n"),
        ("A", ""),
        ("A", "s"),
        ("A", "t"),
        ("B", "ut"),
        ("E", "arlier"),
        ("H", "e"),
        ("H", "er"),
        ("H", "ere"),
        ("H", "owever"),
        ("I", "f"),
        ("I", "n"),
        ("I", "t"),
        ("L", "ast"),
        ("M", "any"),
        ("M", "ore"),
        ("M", "r."),
        ("M", "s."),
        ("N", "ow"),
        ("O", "nce"),
        ("O", "ne"),
        ("O", "ther"),
        ("O", "ur"),
        ("S", "he"),
        ("S", "ince"),
        ("S", "o"),
        ("S", "ome"),
        ("S", "uch"),
        ("T", "hat"),
        ("T", "he"),
        ("T", "heir"),
        ("T", "hen"),
        ("T", "here"),
        ("T", "hese"),
        ("T", "hey"),
        ("T", "his"),
        ("W", "e"),
        ("W", "hen"),
        ("W", "hile"),
        ("W", "hat"),
        ("Y", "et"),
        ("Y", "ou"),
    ];
    let mut alts: Vec<Re> = list.iter().map(|(f, r)| cap(f, r)).collect();
    alts.push(sgml());
    Re::Alt(alts)
}

fn phone() -> Re {
    let d = || set("0-9");
    let sep = || set("\\- \u{A0}");
    let plus = || seq!["+", lit("+").opt()].opt();
    let area = alt![
        seq!["(", d().rep(2, 3), ")", set(" \u{A0}").opt()],
        seq![plus(), seq![d().rep(2, 4), sep()].opt(), d().rep(2, 4), sep()]
    ];
    alt![
        seq![area, d().rep(3, 4), sep().opt(), d().rep(3, 5)],
        seq![seq![plus(), d().rep(2, 4), "."].opt(), d().rep(2, 4), ".", d().rep(3, 4), ".", d().rep(3, 5)]
    ]
}

fn misc_symbol() -> Re {
    set("+%&~^|\\\\\u{A6}\u{A7}\u{A8}\u{A9}\u{AC}\u{AE}\u{AF}\u{B0}-\u{B3}\u{B4}-\u{BA}\u{D7}\u{F7}\
\u{387}\u{5BE}\u{5C0}\u{5C3}\u{5C6}\u{5F3}\u{5F4}\u{600}-\u{603}\u{606}-\u{60A}\u{60C}\u{614}\
\u{61B}\u{61E}\u{66A}\u{66D}\u{703}-\u{70D}\u{7F6}\u{7F7}\u{7F8}\u{964}\u{965}\u{E4F}\u{1FBD}\
\u{2016}\u{2017}\u{2020}-\u{2023}\u{2030}-\u{2038}\u{203B}\u{203E}-\u{2042}\u{2044}\
\u{207A}-\u{207F}\u{208A}-\u{208E}\u{2100}-\u{214F}\u{2190}-\u{21FF}\u{2200}-\u{2BFF}\u{3012}\
\u{30FB}\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF20}\u{FF3B}-\u{FF40}\u{FF5B}-\u{FF65}")
}

/// All rules in lexer order.
pub(crate) fn rules() -> Vec<Rule> {
    use Action::*;
    let insentp = || set(",;:\u{3001}");
    let digits = || set("0-9");
    let url_stop = " \t\n\u{C}\r\"<>|.!?(){},\\-";

    let date = seq![digit().rep(1, 2), set("\\-/"), digit().rep(1, 2), set("\\-/"), digit().rep(2, 4)];
    let num = alt![digit().plus(), seq![digit().star(), seq![set(".:,\u{AD}\u{66B}\u{66C}"), digit().plus()].plus()]];
    let number = seq![set("\\-+").opt(), num];
    let subsupnum = seq![
        set("\u{207A}\u{207B}\u{208A}\u{208B}").opt(),
        alt![set("\u{2070}\u{B9}\u{B2}\u{B3}\u{2074}-\u{2079}").plus(), set("\u{2080}-\u{2089}").plus()]
    ];
    let frac = seq![
        seq![digit().rep(1, 4), set("\\- \u{A0}")].opt(),
        digit().rep(1, 4),
        alt![seq![lit("\\").opt(), "/"], "\u{2044}"],
        digit().rep(1, 4)
    ];
    let dolsign = alt![seq![set("A-Z").star(), "$"], "#"];
    let dolsign2 =
        set("\u{A2}\u{A3}\u{A4}\u{A5}\u{80}\u{20A0}\u{20AC}\u{60B}\u{E3F}\u{20A4}\u{FFE0}\u{FFE1}\u{FFE5}\u{FFE6}");
    let filename = seq![
        letter_x_digit().plus(),
        seq![".", letter_x_digit().plus()].star(),
        ".",
        words(&[
            "bat", "bmp", "c", "class", "cgi", "cpp", "dll", "doc", "docx", "exe", "gif", "gz", "h", "htm", "html",
            "jar", "java", "jpeg", "jpg", "mov", "mp3", "pdf", "php", "pl", "png", "ppt", "ps", "py", "sql", "tar",
            "txt", "wav", "x", "xml", "zip",
        ])
    ];
    let thing_prefix = || seq![set("dDoOlL"), apos_etc(), letter_digit()].opt();
    let thing =
        seq![thing_prefix(), letter_digit().plus(), seq![hyphen(), thing_prefix(), letter_digit().plus()].star()];
    let spamp = || lit("&amp;");
    let thinga = seq![set("A-Z").plus(), seq![alt![set("+&"), spamp()], set("A-Z").plus()].plus()];
    let thing3_part = || seq![set("A-Za-z0-9").plus(), seq!["-", set("A-Za-z").plus()].rep(0, 2)];
    let thing3 = seq![thing3_part(), seq![lit("\\").opt(), "/", thing3_part()].rep(1, 2)];
    let hthing = seq![
        set("A-Za-z0-9"),
        set("A-Za-z0-9.,\u{AD}").star(),
        seq!["-", alt![set("A-Za-z0-9\u{AD}").plus(), seq![acro2(), "."]]].plus()
    ];
    let sword = seq![set("A-Za-z\u{AD}").star(), set("A-MO-Za-mo-z"), lit("\u{AD}").star()];
    let apoword = alt![
        seq![apos(), "n", apos().opt()],
        seq![set("lLdDjJ"), apos()],
        seq!["Dunkin", apos()],
        seq!["somethin", apos()],
        seq!["ol", apos()],
        seq![apos(), "em"],
        seq![set("A-HJ-XZn"), apos_etc(), letter().rep(2, 2), letter().star()],
        seq![apos(), set("2-9"), "0s"],
        seq![apos(), "til", lit("l").opt()],
        seq![letter(), letter().star(), set("aeiouyAEIOUY"), apos_etc(), set("aeiouA-Z"), letter().star()],
        seq![apos(), "cause"],
        seq!["cont'd", lit(".").opt()],
        "'twas",
        "nor'easter",
        "c'mon",
        "e'er",
        "s'mores",
        "ev'ry",
        "li'l",
        "nat'l",
        seq!["O", apos_etc(), "o"]
    ];
    let fullurl = seq!["http", lit("s").opt(), "://", nset(" \t\n\u{C}\r\"<>|(){}").plus(), nset(url_stop)];
    let likelyurl = seq![
        alt![
            seq!["www.", seq![nset(" \t\n\u{C}\r\"<>|.!?(){},").plus(), "."].plus(), set("a-zA-Z").rep(2, 4)],
            seq![
                // `,-_` is a range in the original class: U+002C..U+005F.
                seq![nset(" \t\n\u{C}\r\"`'<>|.!?(){}\u{2C}-\u{5F}$").plus(), "."].plus(),
                words(&["com", "net", "org", "edu"])
            ]
        ],
        seq!["/", nset(" \t\n\u{C}\r\"<>|()").plus(), nset(url_stop)].opt()
    ];
    let email_part = || nset(" \t\n\u{C}\r\"<>|(){}.\u{A0}");
    let email = seq![
        alt!["&lt;", "<"].opt(),
        set("a-zA-Z0-9"),
        nset(" \t\n\u{C}\r\"<>|()\u{A0}{}").star(),
        "@",
        seq![email_part().plus(), "."].star(),
        email_part().plus(),
        alt!["&gt;", ">"].opt()
    ];
    let twitter = alt![seq!["@", set("a-zA-Z_"), set("a-zA-Z_0-9").star()], seq!["#", letter_x().plus()]];
    let tbspec = alt![
        seq!["-", words(&["RRB", "LRB", "RCB", "LCB", "RSB", "LSB"]), "-"],
        "C.D.s",
        "pro-",
        "anti-",
        seq!["S", alt!["&", "&amp;"], "P-500"],
        seq!["S", alt!["&", "&amp;"], "Ls"],
        seq!["Cap", apos(), "n"],
        seq!["c", apos(), "est"]
    ];
    let tbspec2 = seq![apos(), digits(), digits()];
    let smiley = seq![set("<>").opt(), set(":;="), set("\\-o*'").opt(), set("()DPdpO\\\\{@|[]")];
    let asian_eye = "\\-^x=~<>'";
    let asiansmiley = alt![
        // The original writes `[\^x=~<>]\.\[\^x=~<>]`: the second part is a
        // literal string, not a class.
        seq![set("^x=~<>"), ".", "[^x=~<>]"],
        seq![set(asian_eye), "_", set(asian_eye)],
        seq!["(", set(asian_eye), set("_.").opt(), set(asian_eye), ")"],
        seq!["(", set("^x=~<>'"), "-", set("^x=~<>'`"), ")"]
    ];
    let ldots = alt![lit(".").rep(3, 5), seq![seq![".", set(" \u{A0}")].rep(2, 4), "."], set("\u{85}\u{2026}")];
    let fnmarks = alt![lit("@").plus(), lit("#").plus(), lit("_").plus()];
    let asts = alt![lit("*").plus(), lit("\\*").rep(1, 3)];
    let quotes = alt![
        apos(),
        "''",
        set("`\u{2018}\u{2019}\u{201A}\u{201B}\u{201C}\u{201D}\u{91}\u{92}\u{93}\u{94}\u{201E}\u{201F}\u{2039}\u{203A}\u{AB}\u{BB}")
            .rep(1, 2)
    ];
    let dblquot = || alt!["\"", "&quot;"];
    let sentend = seq![spacenl(), Re::Alt(vec![spacenl(), upper(), sgml()])];

    vec![
        rule(seq!["c", set("+"), set("+")], Keep),
        rule(seq![alt!["c", "f"], "#"], Keep),
        rule(lit("cannot"), Pushback(3)),
        rule(lit("'twas"), Pushback(3)),
        rule(lit("'tis"), Pushback(2)),
        rule(words(&["gonna", "gotta", "lemme", "gimme", "wanna"]), Pushback(2)),
        rule(sgml(), Nbsp),
        rule(alt![seq!["&", words(&["MD", "mdash", "ndash"]), ";"], set("\u{96}\u{97}\u{2013}\u{2014}\u{2015}")], Dash),
        rule(spamp(), Amp),
        rule(
            seq![
                "&",
                alt![words(&["HT", "TL", "UR", "LR", "QC", "QL", "QR", "odq", "cdq"]), seq!["#", digits().plus()]],
                ";"
            ],
            Keep,
        ),
        rule_ctx(word(), redaux(), SoftHyphens),
        rule_ctx(sword, sredaux(), SoftHyphens),
        rule(word(), SoftHyphens),
        rule(apoword, Keep),
        rule_ctx(seq!["y", apos()], letter(), Keep),
        rule(fullurl, Keep),
        rule(likelyurl, Keep),
        rule(email, Keep),
        rule(twitter, Keep),
        rule_ctx(redaux(), nset("A-Za-z"), Quotes(false)),
        rule_ctx(sredaux(), nset("A-Za-z"), Quotes(false)),
        rule(date, Keep),
        rule(number, SoftHyphens),
        rule(subsupnum, Keep),
        rule(frac, Nbsp),
        rule(set("\u{BC}\u{BD}\u{BE}\u{2153}-\u{215E}"), Fraction),
        rule(tbspec, Amp),
        rule(thing3, Keep),
        rule(dolsign, Keep),
        rule(dolsign2, Currency),
        rule_ctx(seq![acro(), "."], seq![spacenl().plus(), sentence_starters(), spacenl()], Acronym),
        rule_ctx(abbrev3(), seq![spacenl().opt(), digit()], Keep),
        rule_ctx(seq![alt![seq!["pt", set("eyEY")], "co"], "."], seq![space(), words(&["ltd", "lim"])], Keep),
        rule_ctx(abbrev1(), sentend, Reduplicate),
        rule_ctx(abbrev1(), seq![any(), any()], Keep),
        rule(abbrev1(), Reduplicate),
        rule(seq![abbrev4(), "."], Keep),
        rule_ctx(abbrev4(), space(), Keep),
        rule_ctx(acro(), spacenl(), Keep),
        rule_ctx(tbspec2, spacenl(), Keep),
        rule_ctx(filename, alt![spacenl(), set(".?!,")], Keep),
        rule_ctx(seq![word(), "."], insentp(), SoftHyphens),
        rule(phone(), Phone),
        rule_ctx(dblquot(), set("A-Za-z0-9$"), Quotes(true)),
        rule(dblquot(), Quotes(false)),
        rule(lit("\u{7F}"), Skip),
        rule(alt!["<", "&lt;"], Const("<")),
        rule(alt![">", "&gt;"], Const(">")),
        rule_ctx(smiley, nset("A-Za-z0-9"), Parens),
        rule(asiansmiley, Parens),
        rule(lit("{"), Const("-LCB-")),
        rule(lit("}"), Const("-RCB-")),
        rule(lit("["), Const("-LSB-")),
        rule(lit("]"), Const("-RSB-")),
        rule(lit("("), Const("-LRB-")),
        rule(lit(")"), Const("-RRB-")),
        rule(lit("-").plus(), Hyphens),
        rule(ldots, Ellipsis),
        rule(fnmarks, Keep),
        rule(asts, Keep),
        rule(insentp(), Keep),
        rule(set("?!").plus(), Keep),
        rule(set(".\u{A1}\u{BF}\u{37E}\u{589}\u{61F}\u{6D4}\u{700}-\u{702}\u{7FA}\u{3002}"), Keep),
        rule(lit("="), Keep),
        rule(lit("/"), Keep),
        rule_ctx(seq![hthing.clone(), "."], insentp(), SoftHyphens),
        rule(hthing, SoftHyphens),
        rule_ctx(seq![thing.clone(), "."], insentp(), Keep),
        rule(thing, Keep),
        rule_ctx(seq![thinga.clone(), "."], insentp(), Amp),
        rule(thinga, Amp),
        rule_ctx(lit("'"), seq![set("A-Za-z"), nset(" \t\n\r\u{A0}")], Quotes(true)),
        rule(redaux(), Quotes(false)),
        rule(sredaux(), Quotes(false)),
        rule(quotes, Quotes(false)),
        rule(alt!["<<", ">>"], Keep),
        rule(misc_symbol(), Keep),
        rule(alt!["\u{0}", space().plus(), set("\u{200B}\u{200E}-\u{200F}\u{FEFF}")], Skip),
        rule(newline(), Newline),
        rule(lit("&nbsp;"), Skip),
        rule(nset("\n"), Untokenizable),
    ]
}
