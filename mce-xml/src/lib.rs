//! A tolerant XML reader for MCE's SOAP bodies: namespace prefixes are
//! dropped, attributes kept by local name, text trimmed, a self-closing or
//! `xsi:nil` element reads as empty text. A single child and a list of
//! children look alike to callers (`children(name)` returns both).

use quick_xml::Reader;
use quick_xml::events::Event;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name, without prefix.
    pub name: String,
    /// `(local name, value)` pairs.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// Trimmed text content (empty for nil and self-closing elements).
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed XML: {0}")]
pub struct XmlError(pub String);

impl Element {
    /// The first direct child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every direct child with this local name: one or many look alike.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |el, name| el.child(name))
    }

    /// The trimmed text of the child at `names`, if present and non-nil.
    pub fn text_at(&self, names: &[&str]) -> Option<&str> {
        self.path(names).map(|e| e.text.as_str())
    }

    /// Like `text_at` but an empty text counts as absent.
    pub fn non_empty_at(&self, names: &[&str]) -> Option<&str> {
        self.text_at(names).filter(|t| !t.is_empty())
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn local(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    match name.rsplit_once(':') {
        Some((_, local)) => local.to_string(),
        None => name.into_owned(),
    }
}

fn open(start: &quick_xml::events::BytesStart<'_>) -> Result<Element, XmlError> {
    let mut el = Element {
        name: local(start.name().as_ref()),
        ..Element::default()
    };
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError(e.to_string()))?;
        let value = attr.unescape_value().map_err(|e| XmlError(e.to_string()))?;
        el.attrs.push((local(attr.key.as_ref()), value.into_owned()));
    }
    Ok(el)
}

/// Parses a whole document into its root element.
pub fn parse(doc: &str) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(doc);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let event = reader.read_event().map_err(|e| XmlError(e.to_string()))?;
        match event {
            Event::Start(start) => stack.push(open(&start)?),
            Event::Empty(start) => {
                let el = open(&start)?;
                attach(&mut stack, &mut root, el);
            }
            Event::End(_) => {
                let mut el = stack.pop().ok_or_else(|| XmlError("unbalanced end tag".into()))?;
                el.text = el.text.trim().to_string();
                attach(&mut stack, &mut root, el);
            }
            Event::Text(text) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&text.decode().map_err(|e| XmlError(e.to_string()))?);
                }
            }
            Event::CData(data) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&data.decode().map_err(|e| XmlError(e.to_string()))?);
                }
            }
            Event::GeneralRef(reference) => {
                let name = reference.decode().map_err(|e| XmlError(e.to_string()))?;
                let resolved = quick_xml::escape::unescape(&format!("&{name};"))
                    .map_err(|e| XmlError(e.to_string()))?
                    .into_owned();
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError("unexpected end of document".into()));
    }
    root.ok_or_else(|| XmlError("empty document".into()))
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

/// Escapes a value for element text or an attribute: `& < > " '`.
pub fn escape(value: &str) -> String {
    quick_xml::escape::escape(value).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_prefixes_keeps_attrs_and_reads_nil_as_empty() {
        let doc = r#"<?xml version="1.0"?><soap:Envelope xmlns:soap="s" xmlns:xsi="x">
            <soap:Body><R xmlns="p"><Results xsi:type="DataFolder"><PartnerKey xsi:nil="true"/>
            <ID> 12 </ID><Name>A &amp; B &#233;</Name></Results></R></soap:Body></soap:Envelope>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "Envelope");
        let results = root.path(&["Body", "R", "Results"]).unwrap();
        assert_eq!(results.attr("type"), Some("DataFolder"));
        assert_eq!(results.text_at(&["PartnerKey"]), Some(""));
        assert_eq!(results.non_empty_at(&["PartnerKey"]), None);
        assert_eq!(results.text_at(&["ID"]), Some("12"));
        assert_eq!(results.text_at(&["Name"]), Some("A & B é"));
    }

    #[test]
    fn one_child_and_many_children_read_alike() {
        let one = parse("<a><b>1</b></a>").unwrap();
        let many = parse("<a><b>1</b><c/><b>2</b></a>").unwrap();
        assert_eq!(one.children("b").count(), 1);
        assert_eq!(
            many.children("b").map(|b| b.text.as_str()).collect::<Vec<_>>(),
            ["1", "2"]
        );
    }

    #[test]
    fn cdata_and_malformed_input() {
        assert_eq!(parse("<a><![CDATA[x < y]]></a>").unwrap().text, "x < y");
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("").is_err());
        assert!(parse("<a>").is_err());
    }

    #[test]
    fn escape_covers_the_five() {
        assert_eq!(
            escape(r#"<a & 'b' "c">"#),
            "&lt;a &amp; &apos;b&apos; &quot;c&quot;&gt;"
        );
    }
}
