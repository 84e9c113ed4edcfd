-- Argo CD health check for kms.cmk.io/CustomerMasterKey. Argo CD runs it with only the base,
-- table and package libraries (and a safe os): no string library, so no string methods here.
--   Healthy     Ready is True, Reconciling is not, and status.observedGeneration is
--               metadata.generation: the KMS is as the spec asks (enabled, disabled, deletion
--               scheduled, waiting for material).
--   Degraded    Stalled is True for this generation: only a person can unblock the key; the
--               message is the Stalled reason and message.
--   Progressing anything else: the operator has not yet seen this generation, or is moving
--               the key toward the spec (the message is Reconciling's, else Ready's).
local hs = { status = "Progressing", message = "Waiting for the operator" }

local function condition(conditions, kind)
  for _, c in ipairs(conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  return hs
end

-- A status written for an older generation says nothing yet about the spec as it is now.
local generation = tonumber(obj.metadata.generation)
local current = generation ~= nil and tonumber(status.observedGeneration) == generation

local stalled = condition(status.conditions, "Stalled")
if current and stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

-- While the operator is still moving the key (a call that failed and is retried, say), Ready
-- may say what was last known: kstatus reads that as in progress too.
local reconciling = condition(status.conditions, "Reconciling")
local moving = reconciling ~= nil and reconciling.status == "True"
local ready = condition(status.conditions, "Ready")
if current and not moving and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

if moving then
  hs.message = describe(reconciling)
elseif not current then
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
elseif ready ~= nil then
  hs.message = describe(ready)
end
return hs
