// The llmjobs dashboard: the job API's routes and the dashboard's own, drawn into the page.
// Plain JavaScript, no dependency; every job value is written as text, never as HTML.
'use strict';

const BASE = location.pathname.endsWith('/') ? location.pathname : location.pathname + '/';
const TOKEN_KEY = 'llmjobs-token';
const STATES = ['pending', 'running', 'completed', 'failed', 'cancelled'];
const $ = (id) => document.getElementById(id);

// ---- Requests ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

function headers() {
  // The custom header is what the server's cross-site check asks of a browser's changes.
  const h = { 'Accept': 'application/json', 'X-Llmjobs-Request': 'dashboard' };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h.Authorization = 'Bearer ' + token;
  return h;
}

async function api(path, method = 'GET') {
  const res = await fetch(BASE + path, { method, headers: headers(), cache: 'no-store' });
  if (res.status === 401) {
    if (await askToken()) return api(path, method);
    throw new ApiError('This server needs its API token for that.', 401);
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(body.error || res.statusText, res.status);
  return body;
}

// Asks for the token (once: it is kept for this tab); true if one was given. Requests refused
// at the same moment share one question.
let asking = null;
function askToken() {
  if (!asking) asking = promptToken().finally(() => { asking = null; });
  return asking;
}

async function promptToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  const dialog = $('token-dialog');
  $('token-input').value = '';
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener('close', resolve, { once: true }));
  const token = $('token-input').value.trim();
  if (dialog.returnValue !== 'ok' || !token) return false;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token-button').hidden = false;
  return true;
}

async function confirmAction(text, verb) {
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = verb;
  dialog.returnValue = '';
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener('close', resolve, { once: true }));
  return dialog.returnValue === 'ok';
}

// ---- Small builders ----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const when = (text) => (text ? new Date(text).toLocaleString() : '—');
const pretty = (value) => JSON.stringify(value, null, 2);

function stateBadge(job) {
  const badge = el('span', { class: 'state state-' + job.state, text: job.state });
  if (job.needs_review) badge.append(el('span', { class: 'review', text: ' · needs review' }));
  return badge;
}

function progressCell(job) {
  const p = job.progress || {};
  const wrap = el('div', { class: 'progress' });
  let fraction = typeof p.fraction === 'number' ? p.fraction : null;
  if (job.state === 'completed') fraction = 1;
  if (fraction !== null) {
    wrap.append(el('progress', { max: '1', value: String(Math.max(0, Math.min(1, fraction))),
      'aria-label': 'progress of ' + job.id }));
  }
  const words = [p.stage, p.message].filter(Boolean).join(': ');
  if (words) wrap.append(el('span', { class: 'stage', text: words }));
  return wrap;
}

function setMessage(id, text) {
  const node = $(id);
  node.textContent = text || '';
  node.hidden = !text;
}

// ---- The jobs table ----------------------------------------------------------------------

const list = { rows: new Map(), cursor: null, names: new Set() };

function filters() {
  return { state: $('filter-state').value, name: $('filter-name').value };
}

function matches(job) {
  const f = filters();
  return (!f.state || job.state === f.state) && (!f.name || job.name === f.name);
}

function row(job) {
  const tr = el('tr', { 'data-id': job.id, 'data-state': job.state, 'data-created': job.created_at },
    el('td', {}, el('a', { href: '#/jobs/' + job.id, class: 'mono', title: job.id,
      text: '…' + job.id.slice(-8) })),
    el('td', { text: job.name }),
    el('td', {}, stateBadge(job)),
    el('td', {}, progressCell(job)),
    el('td', { text: job.attempts + ' / ' + job.max_attempts }),
    el('td', {}, el('time', { datetime: job.created_at, text: when(job.created_at) })));
  return tr;
}

// Draws a job into the table: in place if it is there, else where its age puts it.
function showJob(job, append = false) {
  const body = $('jobs').tBodies[0];
  const old = list.rows.get(job.id);
  const fresh = row(job);
  list.rows.set(job.id, fresh);
  if (old) {
    old.replaceWith(fresh);
  } else if (append) {
    body.append(fresh);
  } else {
    const later = [...body.rows].find((r) => r.dataset.created < job.created_at);
    if (later) body.insertBefore(fresh, later);
    else if (!list.cursor) body.append(fresh);
    else return; // older than this page: "Load more" brings it
  }
  $('empty').hidden = true;
}

async function loadJobs(more = false) {
  const f = filters();
  const query = new URLSearchParams({ limit: '50' });
  if (f.state) query.set('state', f.state);
  if (f.name) query.set('name', f.name);
  if (more && list.cursor) query.set('cursor', list.cursor);
  try {
    const page = await api('jobs?' + query);
    if (!more) {
      $('jobs').tBodies[0].replaceChildren();
      list.rows.clear();
    }
    for (const job of page.jobs) showJob(job, true);
    list.cursor = page.next_cursor;
    $('more').hidden = !list.cursor;
    $('empty').hidden = list.rows.size > 0;
    setMessage('list-message', '');
  } catch (e) {
    setMessage('list-message', 'Could not list the jobs: ' + e.message);
  }
}

// ---- Counts and the chart ----------------------------------------------------------------

function showCounts(counts) {
  const items = STATES.map((state) => el('li', {},
    el('button', { type: 'button', class: 'count state-' + state, 'data-state': state,
      'aria-pressed': String($('filter-state').value === state),
      onclick: () => {
        $('filter-state').value = $('filter-state').value === state ? '' : state;
        $('filter-state').dispatchEvent(new Event('change'));
      } },
    el('span', { class: 'n', text: String(counts[state] ?? 0) }),
    el('span', { class: 'label', text: state }))));
  $('counts').replaceChildren(...items);
}

function showChart(chart) {
  const svg = $('chart');
  const ns = 'http://www.w3.org/2000/svg';
  const n = chart.completed.length;
  const totals = chart.completed.map((c, i) => c + chart.failed[i] + chart.cancelled[i]);
  const top = Math.max(1, ...totals);
  const width = 600 / n;
  const shapes = [];
  for (let i = 0; i < n; i++) {
    let y = 120;
    const minute = new Date(chart.start_ms + i * chart.bucket_ms);
    const group = document.createElementNS(ns, 'g');
    const title = document.createElementNS(ns, 'title');
    title.textContent = minute.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) +
      ': ' + chart.completed[i] + ' completed, ' + chart.failed[i] + ' failed, ' +
      chart.cancelled[i] + ' cancelled';
    group.append(title);
    for (const kind of ['completed', 'failed', 'cancelled']) {
      const h = (chart[kind][i] / top) * 110;
      if (h <= 0) continue;
      y -= h;
      const bar = document.createElementNS(ns, 'rect');
      bar.setAttribute('x', String(i * width + 1));
      bar.setAttribute('width', String(Math.max(1, width - 2)));
      bar.setAttribute('y', String(y));
      bar.setAttribute('height', String(h));
      bar.setAttribute('class', kind);
      group.append(bar);
    }
    shapes.push(group);
  }
  svg.replaceChildren(...shapes);
  $('chart-max').textContent = 'tallest bar: ' + top + ' a minute' +
    (chart.truncated ? ' (the oldest minutes are cut short)' : '');
}

async function loadOverview() {
  try {
    const o = await api('dashboard/overview');
    showCounts(o.counts);
    showChart(o.chart);
    const select = $('filter-name');
    for (const name of Object.keys(o.by_name)) {
      if (list.names.has(name)) continue;
      list.names.add(name);
      select.append(el('option', { text: name, value: name }));
    }
  } catch (e) {
    setMessage('list-message', 'Could not read the counts: ' + e.message);
  }
}

// ---- The job page ------------------------------------------------------------------------

const page = { id: null, detail: null, refreshing: null };

function section(title, ...content) {
  return el('section', { class: 'panel' }, el('h3', { text: title }), ...content);
}

function table(headings, rows) {
  return el('div', { class: 'table-wrap' }, el('table', {},
    el('thead', {}, el('tr', {}, ...headings.map((h) => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, ...rows.map((cells) => el('tr', {}, ...cells.map((c) => el('td', {}, c)))))));
}

function drawJob(detail) {
  const job = detail.job;
  $('job-title').replaceChildren(el('span', { text: job.name + ' ' }), stateBadge(job));
  const actions = el('div', { class: 'actions' });
  if (job.state === 'pending' || job.state === 'running') {
    actions.append(el('button', { type: 'button', class: 'danger', id: 'cancel-job',
      onclick: () => act('cancel'), text: 'Cancel job' }));
  }
  if (job.state === 'failed' || job.state === 'cancelled') {
    actions.append(el('button', { type: 'button', id: 'retry-job',
      onclick: () => act('retry'), text: 'Retry job' }));
  }
  const facts = [
    ['Id', el('span', { class: 'mono', text: job.id })],
    ['Attempts', job.attempts + ' of ' + job.max_attempts],
    ['Created', when(job.created_at)],
    ['Started', when(job.started_at)],
    ['Ended', when(job.completed_at)],
    ['Next run', job.state === 'pending' ? when(job.run_at) : null],
    ['Worker', detail.owner],
    ['Priority', String(job.priority)],
    ['Idempotency key', job.idempotency_key],
    ['Cancel requested', job.cancel_requested ? 'yes' : null],
  ].filter(([, v]) => v !== null && v !== undefined);
  const dl = el('dl', { class: 'facts' });
  for (const [k, v] of facts) dl.append(el('dt', { text: k }), el('dd', {}, v));
  const p = job.progress || {};
  const parts = [
    actions,
    section('Progress', progressCell(job),
      p.partial_output ? el('pre', { class: 'output', text: p.partial_output }) : null),
    dl,
  ];
  if (detail.usage) {
    const u = detail.usage;
    parts.push(section('Tokens and cost', el('p', {
      id: 'usage',
      text: u.input_tokens + ' in, ' + u.output_tokens + ' out' +
        (typeof u.cost_usd === 'number' ? ', $' + u.cost_usd.toFixed(4) : ', cost unknown'),
    })));
  }
  parts.push(section('Arguments', el('pre', { text: pretty(detail.args) })));
  if (job.state === 'completed') {
    parts.push(section('Result', el('pre', { id: 'result', text: pretty(job.result) })));
  }
  if (job.error) {
    parts.push(section(job.state === 'failed' ? 'Error' : 'Last error',
      el('pre', { class: 'error', text: job.error })));
  }
  const runs = detail.earlier_runs.map((run, i) => [
    'run ' + (i + 1), stateBadge(run), run.attempts + ' attempt(s)', run.error || '—',
    run.ended_at_ms ? when(new Date(run.ended_at_ms).toISOString()) : '—']);
  runs.push(['this run', stateBadge(job), job.attempts + ' of ' + job.max_attempts,
    job.error || '—', when(job.completed_at)]);
  parts.push(section('Attempts', table(['Run', 'State', 'Attempts', 'Last error', 'Ended'], runs)));
  const ended = (a) => when(new Date(a.ended_at_ms).toISOString());
  const failures = [];
  detail.earlier_runs.forEach((run, i) => (run.attempt_errors || []).forEach((a) =>
    failures.push(['run ' + (i + 1), String(a.attempt), a.error, ended(a)])));
  (detail.attempt_errors || []).forEach((a) =>
    failures.push(['this run', String(a.attempt), a.error, ended(a)]));
  if (failures.length) {
    parts.push(section('Attempt errors', table(['Run', 'Attempt', 'Error', 'Ended'], failures)));
  }
  parts.push(section('Step journal', detail.steps.length
    ? table(['#', 'Step', 'Output', 'Recorded'], detail.steps.map((s) => [
      String(s.position), s.name, s.size + ' B', when(s.recorded_at)]))
    : el('p', { class: 'message', text: 'No journaled steps.' })));
  $('job-body').replaceChildren(...parts);
}

async function loadJob(id) {
  try {
    page.detail = await api('dashboard/jobs/' + encodeURIComponent(id));
    if (page.id === id) drawJob(page.detail);
    setMessage('job-message', '');
  } catch (e) {
    setMessage('job-message', e.status === 404 ? 'No job with id ' + id + '.'
      : 'Could not read the job: ' + e.message);
  }
}

// Re-reads the job page at most once a second while events come in.
function refreshJob() {
  if (page.refreshing) return;
  page.refreshing = setTimeout(async () => {
    await loadJob(page.id);
    page.refreshing = null;
  }, 1000);
}

async function act(kind) {
  const job = page.detail.job;
  const ok = await confirmAction(
    kind === 'cancel' ? 'Cancel job ' + job.name + ' (' + job.id + ')?'
      : 'Retry job ' + job.name + ' (' + job.id + ') from where it stopped?',
    kind === 'cancel' ? 'Cancel job' : 'Retry job');
  if (!ok) return;
  try {
    if (kind === 'cancel') {
      const out = await api('jobs/' + job.id, 'DELETE');
      setMessage('job-message', out.cancel === 'requested'
        ? 'Cancel requested: the worker stops it within about a second.' : 'Cancelled.');
    } else {
      await api('jobs/' + job.id + '/retry', 'POST');
      setMessage('job-message', 'Pending again.');
    }
  } catch (e) {
    setMessage('job-message', 'Could not ' + kind + ': ' + e.message);
  }
  await loadJob(job.id);
}

// ---- Live updates ------------------------------------------------------------------------

let stream = null;

function onEvent(kind, data) {
  if (kind === 'counts') {
    showCounts(data);
    scheduleOverview();
  } else if (kind === 'job') {
    if (page.id === data.id) refreshJob();
    if (list.rows.has(data.id) || matches(data)) showJob(data);
  }
}

let overviewTimer = null;
function scheduleOverview() {
  if (!overviewTimer) overviewTimer = setTimeout(() => { overviewTimer = null; loadOverview(); }, 2000);
}

// Server-Sent Events read with fetch, so that the token goes in a header as for every request.
async function follow() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  const query = page.id ? '?job=' + encodeURIComponent(page.id) : '';
  while (!controller.signal.aborted) {
    try {
      const res = await fetch(BASE + 'dashboard/events' + query,
        { headers: headers(), signal: controller.signal, cache: 'no-store' });
      if (res.status === 401) {
        $('live').textContent = 'needs the token';
        if (!(await askToken())) return;
        continue;
      }
      if (!res.ok) throw new Error(res.statusText);
      $('live').textContent = 'live';
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = 'message';
          const data = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) kind = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (data.length) onEvent(kind, JSON.parse(data.join('\n')));
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    $('live').textContent = 'reconnecting…';
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ---- Routing -----------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/jobs\/([^/?#]+)$/);
  const id = match ? decodeURIComponent(match[1]) : null;
  const changed = id !== page.id;
  page.id = id;
  $('list-view').hidden = !!id;
  $('job-view').hidden = !id;
  if (id) {
    $('job-title').textContent = 'Job ' + id;
    $('job-body').replaceChildren();
    setMessage('job-message', '');
    loadJob(id);
    $('job-title').focus();
  } else if (changed) {
    loadJobs();
    loadOverview();
  }
  if (changed || !stream) follow();
}

function start() {
  $('job-title').tabIndex = -1;
  if (sessionStorage.getItem(TOKEN_KEY)) $('token-button').hidden = false;
  $('token-button').addEventListener('click', askToken);
  $('filter-state').addEventListener('change', () => { loadJobs(); loadOverview(); });
  $('filter-name').addEventListener('change', () => loadJobs());
  $('more').addEventListener('click', () => loadJobs(true));
  $('search').addEventListener('submit', async (event) => {
    event.preventDefault();
    const id = $('search-id').value.trim();
    if (!id) return;
    try {
      await api('jobs/' + encodeURIComponent(id));
      location.hash = '#/jobs/' + id;
    } catch (e) {
      setMessage('list-message', e.status === 404 || e.status === 400
        ? 'No job with id ' + id + '.' : 'Could not look it up: ' + e.message);
    }
  });
  window.addEventListener('hashchange', route);
  page.id = undefined;
  route();
  setInterval(() => { if (!page.id) loadOverview(); }, 30000);
}

start();
