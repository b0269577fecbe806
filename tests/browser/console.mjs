// The web console in headless Chromium: two pages (alice and bob) sign in with tokens,
// alice sends bob a DM and bob's page shows it, bob types and alice's page shows it, and
// the console's live view counts the connections. Prints one JSON object and exits.
//   node console.mjs CONSOLE_URL ALICE_TOKEN BOB_TOKEN
import { chromium } from 'playwright-core';

const [consoleUrl, aliceToken, bobToken] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  timeout: 60_000,
});
const wait = { timeout: 20_000 };
try {
  const viewer = await browser.newPage();
  await viewer.goto(consoleUrl);
  await viewer.waitForFunction(() => document.getElementById('total').textContent === '0', null, wait);
  const signIn = async (token) => {
    const page = await browser.newPage();
    await page.goto(consoleUrl);
    await page.fill('#token', token);
    await page.click('#connect');
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('connected as'), null, wait);
    return page;
  };
  const alice = await signIn(aliceToken);
  const bob = await signIn(bobToken);
  await alice.fill('#to', 'bob');
  await alice.fill('#body', 'hello from the console');
  await alice.click('#send');
  await bob.waitForFunction(() => document.getElementById('log').textContent.includes('alice: hello from the console'), null, wait);
  await alice.waitForFunction(() => document.getElementById('log').textContent.includes('stored as #1'), null, wait);
  // Bob answers (so his page knows the DM), then types: alice's page shows it.
  await bob.fill('#to', 'alice');
  await bob.fill('#body', 'hi alice');
  await bob.click('#send');
  await alice.waitForFunction(() => document.getElementById('log').textContent.includes('bob: hi alice'), null, wait);
  await bob.type('#body', 'x');
  await alice.waitForFunction(() => document.getElementById('typing').textContent === 'bob is typing…', null, wait);
  // The live view counts the two signed-in pages.
  await viewer.waitForFunction(() => document.getElementById('total').textContent === '2', null, wait);
  const result = {
    bob_log: await bob.textContent('#log'),
    alice_status: await alice.textContent('#status'),
    connections: await viewer.textContent('#total'),
    ack_p50: await viewer.textContent('#ack50'),
  };
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
