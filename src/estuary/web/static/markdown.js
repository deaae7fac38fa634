// A small, safe Markdown renderer for model output, which is untrusted.
//
// It builds DOM nodes with createElement and textContent only: no innerHTML, so "<img onerror=…>"
// in an answer is shown as text, never parsed as HTML. Links are kept only for http: and https:
// URLs (no javascript:, data:, …) and open in a new tab without an opener. Supported: headings,
// paragraphs, fenced code blocks (also while still open, as they stream in), inline code, bold,
// italic, links, bullet and numbered lists, block quotes and horizontal rules.

const SAFE_SCHEMES = new Set(["http:", "https:"]);

/** Render `source` into `target`, replacing what was there. */
export function renderMarkdown(target, source) {
  const fragment = document.createDocumentFragment();
  for (const block of parseBlocks(source.replace(/\r\n?/g, "\n"))) {
    fragment.append(renderBlock(block));
  }
  target.replaceChildren(fragment);
}

/** A URL if it is an absolute http(s) URL, else null. */
export function safeHref(text) {
  try {
    const url = new URL(text);
    return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

function parseBlocks(text) {
  const lines = text.split("\n");
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```|~~~)\s*([\w+-]*)/);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // the closing fence (absent while the block is still streaming in)
      blocks.push({ kind: "code", language: fence[2], text: body.join("\n") });
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      blocks.push({ kind: "heading", level: heading[1].length, text: heading[2] });
      i += 1;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      blocks.push({ kind: "rule" });
      i += 1;
      continue;
    }
    const list = listItem(line);
    if (list) {
      const items = [];
      while (i < lines.length && listItem(lines[i])?.ordered === list.ordered) {
        items.push(listItem(lines[i]).text);
        i += 1;
      }
      blocks.push({ kind: "list", ordered: list.ordered, items });
      continue;
    }
    if (line.startsWith(">")) {
      const quoted = [];
      while (i < lines.length && lines[i].startsWith(">")) {
        quoted.push(lines[i].replace(/^>\s?/, ""));
        i += 1;
      }
      blocks.push({ kind: "quote", text: quoted.join(" ") });
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) {
      paragraph.push(lines[i]);
      i += 1;
    }
    blocks.push({ kind: "paragraph", text: paragraph.join("\n") });
  }
  return blocks;
}

function listItem(line) {
  const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
  if (bullet) return { ordered: false, text: bullet[1] };
  const numbered = line.match(/^\s*\d+[.)]\s+(.*)$/);
  if (numbered) return { ordered: true, text: numbered[1] };
  return null;
}

function startsBlock(line) {
  return /^\s*(```|~~~)/.test(line) || /^#{1,6}\s/.test(line) || listItem(line) !== null ||
    line.startsWith(">");
}

function renderBlock(block) {
  switch (block.kind) {
    case "code": {
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (block.language) code.dataset.language = block.language;
      code.textContent = block.text;
      pre.append(code);
      return pre;
    }
    case "heading": {
      const heading = document.createElement(`h${Math.min(block.level + 2, 6)}`);
      heading.append(...renderInline(block.text));
      return heading;
    }
    case "rule":
      return document.createElement("hr");
    case "list": {
      const list = document.createElement(block.ordered ? "ol" : "ul");
      for (const text of block.items) {
        const item = document.createElement("li");
        item.append(...renderInline(text));
        list.append(item);
      }
      return list;
    }
    case "quote": {
      const quote = document.createElement("blockquote");
      quote.append(...renderInline(block.text));
      return quote;
    }
    default: {
      const paragraph = document.createElement("p");
      paragraph.append(...renderInline(block.text));
      return paragraph;
    }
  }
}

// Inline: `code`, [text](url), **bold**, *italic* / _italic_; everything else is text.
const INLINE = /`([^`]+)`|\[([^\]]+)\]\(([^)\s]+)\)|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_/g;

function renderInline(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) nodes.push(...textWithBreaks(text.slice(last, match.index)));
    const [, code, label, href, bold, italic, italic2] = match;
    if (code !== undefined) {
      const element = document.createElement("code");
      element.textContent = code;
      nodes.push(element);
    } else if (label !== undefined) {
      nodes.push(link(label, href));
    } else if (bold !== undefined) {
      const element = document.createElement("strong");
      element.append(...renderInline(bold));
      nodes.push(element);
    } else {
      const element = document.createElement("em");
      element.append(...renderInline(italic ?? italic2));
      nodes.push(element);
    }
    last = match.index + match[0].length;
  }
  if (last < text.length) nodes.push(...textWithBreaks(text.slice(last)));
  return nodes;
}

function link(label, href) {
  const safe = safeHref(href);
  if (safe === null) return document.createTextNode(label); // javascript:, data:, relative…
  const anchor = document.createElement("a");
  anchor.href = safe;
  anchor.textContent = label;
  anchor.target = "_blank";
  anchor.rel = "noopener noreferrer nofollow";
  return anchor;
}

function textWithBreaks(text) {
  const nodes = [];
  text.split("\n").forEach((part, index) => {
    if (index > 0) nodes.push(document.createElement("br"));
    if (part) nodes.push(document.createTextNode(part));
  });
  return nodes;
}
