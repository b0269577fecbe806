// What a page in headless Chromium sees when it opens WebSockets to Switchboard: the
// close code and reason of refused upgrades (?refusals=close), and a token sent as a
// `bearer.` subprotocol entry. Serves its own page on 127.0.0.1:PORT (the page's
// origin), prints one JSON object of results, and exits.
//   node refusals.mjs PORT WS_URL_ALLOWING_THE_PAGE WS_URL_REFUSING_THE_PAGE TOKEN
import http from 'node:http';
import { chromium } from 'playwright-core';

const [port, allowing, refusing, token] = process.argv.slice(2);
const page = `<!doctype html><title>switchboard</title><script>
window.attempt = (url, protocols) => new Promise((done) => {
  const ws = new WebSocket(url, protocols);
  let first = null;
  ws.onmessage = (e) => { if (first === null) { first = e.data; ws.close(1000); } };
  ws.onclose = (e) => done({ code: e.code, reason: e.reason, first });
});
</script>`;
const server = http.createServer((_, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(page);
});
await new Promise((ok) => server.listen(Number(port), '127.0.0.1', ok));
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  timeout: 60_000,
});
try {
  const tab = await browser.newPage();
  await tab.goto(`http://127.0.0.1:${port}/`);
  const attempt = (url, protocols) => tab.evaluate(([u, p]) => window.attempt(u, p), [url, protocols]);
  const results = {
    bad_token: await attempt(`${allowing}?refusals=close&token=not-a-jwt`, ['switchboard.v1.json']),
    bad_token_plain: await attempt(`${allowing}?token=not-a-jwt`, ['switchboard.v1.json']),
    foreign_origin: await attempt(`${refusing}?refusals=close`, ['switchboard.v1.json', `bearer.${token}`]),
    subprotocol_token: await attempt(allowing, ['switchboard.v1.json', `bearer.${token}`]),
  };
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
  server.close();
}
